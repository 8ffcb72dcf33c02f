"""Shared-memory windows: the path for a host on the same machine as the pool server.

Each host creates one window and hands it to the server with its local stream's hello (the file
descriptor travels over the Unix socket, SCM_RIGHTS): the window starts with the mailbox
(mailbox.py), then a data area where block bytes are written, so the sockets carry no blocks.
One window per host, never the pool's own memory, so a host can only ever see bytes the server
chose to copy into its window: isolation holds on this path too.

Why a sealed memfd rather than a file in /dev/shm: a file has a name, so any process of the
same user could open another host's window and post requests in its mailbox as that host; and
a host could truncate its file, making the server die of SIGBUS the next time it looks at the
mailbox. A memfd has no name, and its seals (no shrinking, no growing, no more seals) are
checked by the server before it maps it, so neither can happen. It also goes away by itself
once both processes have unmapped it, whatever way they end.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import stat

from ..errors import PoolError

DEFAULT_WINDOW_BYTES = 64 << 20
MAX_WINDOW_BYTES = 1 << 34
SEALS = getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0) \
    | getattr(fcntl, "F_SEAL_SEAL", 0)
# seals that would stop the server writing replies and blocks into the window (Linux values)
WRITE_SEALS = getattr(fcntl, "F_SEAL_WRITE", 0x0008) | getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)


def available() -> bool:
    """Whether this platform has sealed memfds (Linux)."""
    return hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS")


class ShmWindow:
    """A mapped window. `buf` is a writable memoryview of `size` bytes. A host's window keeps
    its descriptor (`fd`) until it has handed it to the server (`drop_fd`)."""

    def __init__(self, fd: int, size: int, keep_fd: bool):
        self.size = size
        self._map = mmap.mmap(fd, size)    # (if it fails, the descriptor is still the caller's)
        if keep_fd:
            self.fd = fd
        else:
            os.close(fd)
            self.fd = None
        self.buf = memoryview(self._map)

    @classmethod
    def create(cls, size: int = DEFAULT_WINDOW_BYTES) -> "ShmWindow":
        """New window for the calling host, sealed at its size. OSError where memfds are
        missing or refused."""
        if not available():
            raise OSError("no sealed memfds on this platform")
        fd = os.memfd_create("cxlsim-pool-window", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            return cls(fd, size, keep_fd=True)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def adopt(cls, fd: int, min_size: int, max_size: int = MAX_WINDOW_BYTES) -> "ShmWindow":
        """Map a window a host handed over (server side). Only a memfd opened for reading and
        writing, sealed against shrinking, growing and resealing but not against writes, of
        min_size+1 .. max_size bytes: a client must not make the server map anything else.
        Once mapped the descriptor is closed here; a refused one is left to the caller (a
        descriptor from a peer may be anything, and closing some kinds can block)."""
        try:
            st = os.fstat(fd)
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS) if available() else 0
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
        except OSError as exc:
            raise PoolError(f"shm window refused: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode) or seals & SEALS != SEALS or seals & WRITE_SEALS \
                or not writable or not min_size < st.st_size <= max_size:
            raise PoolError(f"shm window refused: it must be a memfd open for reading and "
                            f"writing, sealed against shrinking, growing and resealing and not "
                            f"against writes, of {min_size + 1}..{max_size} B (got "
                            f"{st.st_size} B, seals {seals:#x}, writable {writable})")
        try:
            return cls(fd, st.st_size, keep_fd=False)
        except OSError as exc:      # (not mapped: the descriptor is still the caller's)
            raise PoolError(f"shm window refused: cannot map it ({exc})") from None

    def drop_fd(self) -> None:
        """The server has the window: this side no longer needs its descriptor."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """Unmap (the memory goes once the other side has unmapped too)."""
        self.drop_fd()
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
