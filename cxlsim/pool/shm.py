"""Shared-memory windows: the zero-copy path for a host on the same machine as the pool server.

Each host creates one window (a file in /dev/shm, mapped by both processes). Block bytes are
written into it and the socket carries only (offset, nbytes). One window per host, never the
pool's own memory, so a host can only ever see bytes the server chose to copy into its window:
isolation holds on this path too.

Why a plain file + mmap rather than multiprocessing.shared_memory: on Python < 3.13 opening a
segment registers it with the opener's resource tracker, which unlinks it (and warns) when the
*server* exits; a file we name and unlink ourselves has exactly one owner.
"""
from __future__ import annotations

import mmap
import os
import re
import secrets
import stat
import tempfile
import weakref

from ..errors import PoolError

PREFIX = "cxlsim-pool-"
NAME_RE = re.compile(r"cxlsim-pool-[0-9a-f]{32}\Z")
DEFAULT_WINDOW_BYTES = 64 << 20
MAX_WINDOW_BYTES = 1 << 34


def _unlink_quietly(path: str, creator_pid: int) -> None:
    if os.getpid() != creator_pid:      # a forked child exiting: the window is its parent's
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def shm_dir() -> str:
    """/dev/shm where it exists (memory-backed), else the temp directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
        else tempfile.gettempdir()


class ShmWindow:
    """A mapped window. `buf` is a writable memoryview of `size` bytes."""

    def __init__(self, name: str, fd: int, size: int, owner: bool):
        self.name, self.size, self.owner = name, size, owner
        self.path = os.path.join(shm_dir(), name)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf = memoryview(self._map)

    @classmethod
    def create(cls, size: int = DEFAULT_WINDOW_BYTES) -> "ShmWindow":
        """New window owned by the caller (the host), readable and writable by its user only."""
        name = PREFIX + secrets.token_hex(16)
        fd = os.open(os.path.join(shm_dir(), name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
        except OSError:
            os.close(fd)
            os.unlink(os.path.join(shm_dir(), name))
            raise
        window = cls(name, fd, size, owner=True)
        # a host that never closes its client still removes its window when it exits normally
        window._cleanup = weakref.finalize(window, _unlink_quietly, window.path, os.getpid())
        return window

    @classmethod
    def open(cls, name: str, max_size: int = MAX_WINDOW_BYTES) -> "ShmWindow":
        """Map a host's window by name (server side). Only names this module makes, regular files
        of our own user: a client must not make the server map (or write) anything else."""
        if type(name) is not str or not NAME_RE.match(name):
            raise PoolError(f"shm window name {name!r:.70} is not one cxlsim makes")
        path = os.path.join(shm_dir(), name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise PoolError(f"shm window {name} cannot be opened here ({exc.strerror}); "
                            f"is the host on another machine?") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() \
                or not 0 < st.st_size <= max_size:
            os.close(fd)
            raise PoolError(f"shm window {name} is not a regular file of this user of "
                            f"1..{max_size} B")
        return cls(name, fd, st.st_size, owner=False)

    def close(self, unlink: bool | None = None) -> None:
        """Unmap; the owner (or the server, for a dead host) also removes the file."""
        if self.buf is None:
            return
        try:
            self.buf.release()
        except BufferError:     # a mailbox still polled by another thread holds it: the
            pass                # mapping stays until that lets go, never unmapped under it
        self.buf = None
        try:
            self._map.close()
        except BufferError:     # a caller still holds a view; the map goes with it
            pass
        if self.owner if unlink is None else unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
