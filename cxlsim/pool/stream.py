"""The local stream: the pool's messages over a Unix socket, for hosts on the server's machine.

Why it exists: a ZeroMQ round trip passes through an I/O thread at each end, so a quantum barrier
of four host processes and a server on a 2-core machine costs about 0.4-0.8 ms over ZeroMQ and
about 0.1 ms over a plain Unix socket (docs/performance.md). ZeroMQ stays the way in: a host
attaches over it (with CurveZMQ if configured), the attach reply names the server's stream socket
and a one-time token, and a host on the same machine may then connect there, present the token,
and send every later request over the stream instead. Hosts elsewhere never see the difference.

A message is the same frames as over ZeroMQ (protocol.py: one msgpack header, then data frames),
preceded by a little-endian u32 frame count and one u32 length per frame. The socket lives in a
directory only the server's user can enter, and a stream is served only after a valid token.

Waiting. A process that sleeps until a message arrives is back about 90 us after it, on this
project's 2-core VMs, once it slept longer than a few hundred microseconds (likely the virtual
CPU halting); a process polling without sleeping sees it within about 10 us (docs/performance.md).
A replay barrier pays that twice (host to server, server to host), so both ends poll for a
bounded time where a message is due soon and a core is free for it: the server after handling
requests while fewer hosts than cores are active (`PoolServer(spin_us=...)`, `--spin-us`), a client
for the reply to each request (`PoolClient(spin_us=...)`), and a parked host once the server
told it its release is coming (a `soon` notice, docs/protocol.md). Past the budget they sleep.
"""
from __future__ import annotations

import math
import select
import socket
import struct
import time

from ..errors import PoolError, ProtocolError

_U32 = struct.Struct("<I")
ONE_FRAME_HEAD = struct.Struct("<II")     # frame count 1, and its length
MAX_FRAMES = (1 << 16) + 1          # a header and one data frame per key of a full batch
IOV_MAX = 1024                      # buffers one sendmsg takes (Linux)
# bytes per recv: Python allocates the full size for every call, and a buffer past glibc's mmap
# threshold (128 KiB) costs a map and unmap each time, tripling a small round trip
READ_BYTES = 64 << 10
KEEP_BODY_BYTES = 64 << 20          # a larger body buffer is not kept for the next message
WAIT_SLICE_S = 0.1                  # a waiting client checks its deadline this often
CLIENT_SPIN_US = 300                # a client polls this long for a reply before it sleeps
SERVER_SPIN_US = 1000               # the server polls this long for the next request
MAX_SPIN_US = 50_000                # the most either may be asked to poll (then it sleeps)
# a message of one empty frame: "look at your mailbox" (mailbox.py), sent either way
DOORBELL = [b""]
# why a server closes a host's stream, as a client can tell it: it cannot tell which
STREAM_GONE = ("the server restarted, is down or stopped reading, or detached this host after "
               "a heartbeat timeout")


def tune(sock: socket.socket) -> None:
    """Ask for buffers that hold a 2 MiB block whole (the kernel caps this at net.core.wmem_max):
    with the default ~200 KiB a large block crosses in ten handoffs between the two processes."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
        except OSError:
            pass


def message_prefix(frames) -> bytes:
    lengths = [len(memoryview(f).cast("B")) if not isinstance(f, bytes) else len(f)
               for f in frames]
    return struct.pack(f"<{len(lengths) + 1}I", len(lengths), *lengths)


def is_doorbell(frames) -> bool:
    return len(frames) == 1 and not len(frames[0])


def spin_budget_s(spin_us: float, what: str) -> float:
    """A polling budget in seconds, checked: finite, 0..MAX_SPIN_US."""
    if not (isinstance(spin_us, (int, float)) and 0 <= spin_us <= MAX_SPIN_US):   # NaN too
        raise PoolError(f"{what} must be 0..{MAX_SPIN_US} us, got {spin_us}")
    return spin_us * 1e-6


def wait_in_kernel(sock: socket.socket) -> None:
    """Make a client's stream block inside recv, WAIT_SLICE_S at a time (SO_RCVTIMEO), instead
    of Python's poll-then-recv: on this 2-core VM a sleeper woken from recv is back about 30 us
    sooner than one woken from poll or select (docs/performance.md)."""
    sock.settimeout(None)
    sec = int(WAIT_SLICE_S)
    usec = int(round((WAIT_SLICE_S - sec) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, usec))


def send_message(sock: socket.socket, frames, timeout_s: float) -> None:
    """Write one message within timeout_s in all (socket.timeout if the peer does not read).
    Sends never block: a full socket buffer is waited out with poll, so the socket's own
    blocking mode (the server's never-blocking reads, a client's recv timeout) is left alone."""
    if len(frames) == 1 and isinstance(frames[0], bytes) and len(frames[0]) < READ_BYTES:
        parts = [memoryview(ONE_FRAME_HEAD.pack(1, len(frames[0])) + frames[0])]   # most messages
    else:
        parts = [memoryview(message_prefix(frames))]
        parts += [memoryview(f).cast("B") for f in frames]
    deadline = None
    while parts:
        try:
            sent = sock.sendmsg(parts[:IOV_MAX], [], socket.MSG_DONTWAIT)
        except BlockingIOError:
            now = time.monotonic()
            deadline = deadline or now + timeout_s
            if now >= deadline or not _writable(sock, deadline - now):
                raise socket.timeout(f"the peer read too little of a message within "
                                     f"{timeout_s:g} s") from None
            continue
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = parts[0][sent:]


def _writable(sock: socket.socket, timeout_s: float) -> bool:
    """Wait until sock takes more bytes (poll, not select: select refuses descriptors >= 1024)."""
    waiter = select.poll()
    waiter.register(sock, select.POLLOUT)
    return bool(waiter.poll(max(1, math.ceil(timeout_s * 1000))))


class MessageReader:
    """Reads messages from one socket. Small messages are cut out of what each recv returns
    (most often exactly one message, used in place); a large body is read straight into a
    buffer of its size, so a 2 MiB block costs no piecewise concatenation. Refuses frame
    counts and sizes over the limits (ProtocolError); EOFError when the peer closed."""

    def __init__(self, sock: socket.socket, max_frame_bytes: int, max_frames: int = MAX_FRAMES,
                 max_body_bytes: int | None = None, flags: int = 0):
        self.sock = sock
        self.max_frame_bytes = max_frame_bytes
        self.max_frames = max_frames
        self.max_body_bytes = max_body_bytes or MAX_FRAMES * max_frame_bytes
        self.flags = flags           # socket.MSG_DONTWAIT: never block (the server's readers)
        self._buf = b""              # bytes received and not yet cut into messages
        self._big = None             # (body view, bytes filled, frame lengths) being read
        # one buffer for every large body, reused: a fresh multi-MiB buffer per message costs a
        # page fault per 4 KiB (as much as the copy itself). A large message's frames are views
        # into it, valid until the next read: callers copy what they keep.
        self._body_buf = bytearray()

    @property
    def in_body(self) -> bool:
        """A large body is being read: its next bytes are already on their way."""
        return self._big is not None

    def read(self, flags: int | None = None) -> list[list[memoryview]]:
        """One recv (with `flags`, else the reader's); the messages it completed (maybe none)."""
        flags = self.flags if flags is None else flags
        if self._big is not None:
            body, filled, lengths = self._big
            got = self.sock.recv_into(body[filled:], 0, flags)
            if not got:
                raise EOFError
            filled += got
            if filled < len(body):
                self._big = (body, filled, lengths)
                return []
            self._big = None
            if len(self._body_buf) > KEEP_BODY_BYTES:
                self._body_buf = bytearray()   # frames still point into the old one
            return [_split(body, lengths)]
        data = self.sock.recv(READ_BYTES, flags)
        if not data:
            raise EOFError
        self._buf = self._buf + data if self._buf else data
        return self._cut()

    def _cut(self) -> list[list[memoryview]]:
        out, buf, at = [], self._buf, 0
        while len(buf) - at >= 4:
            n = _U32.unpack_from(buf, at)[0]
            if not 1 <= n <= self.max_frames:
                raise ProtocolError(f"stream message with {n} frames (1..{self.max_frames} "
                                    f"allowed)")
            head = at + 4 + 4 * n
            if len(buf) < head:
                break
            lengths = struct.unpack_from(f"<{n}I", buf, at + 4)
            if max(lengths) > self.max_frame_bytes:
                raise ProtocolError(f"stream frame of {max(lengths)} B exceeds the "
                                    f"{self.max_frame_bytes} B limit")
            end = head + sum(lengths)
            if end - head > self.max_body_bytes:
                raise ProtocolError(f"stream message of {end - head} B exceeds the "
                                    f"{self.max_body_bytes} B limit")
            if len(buf) >= end:
                out.append(_split(memoryview(buf)[head:end], lengths))
                at = end
            elif end - head > READ_BYTES:         # a large body: read it in place
                if len(self._body_buf) < end - head:
                    self._body_buf = bytearray(end - head)
                body = memoryview(self._body_buf)[:end - head]
                body[:len(buf) - head] = buf[head:]
                self._big = (body, len(buf) - head, lengths)
                at = len(buf)
                break
            else:
                break
        self._buf = buf[at:] if at < len(buf) else b""
        return out


def _split(body: memoryview, lengths) -> list[memoryview]:
    frames, off = [], 0
    for length in lengths:
        frames.append(body[off:off + length])
        off += length
    return frames


def recv_message(reader: MessageReader, deadline: float, pending: list, spin_s: float = 0.0):
    """Next message from a client's socket (set up by wait_in_kernel), or None at the deadline,
    which may pass by up to WAIT_SLICE_S. `pending` holds messages already cut from earlier
    reads. For the first spin_s the socket is polled without sleeping (see Waiting above)."""
    spin_end = time.perf_counter() + spin_s if spin_s > 0 else 0.0
    while not pending:
        if time.monotonic() >= deadline:
            return None
        polling = spin_end and time.perf_counter() < spin_end
        try:
            pending.extend(reader.read(socket.MSG_DONTWAIT if polling else None))
        except (BlockingIOError, socket.timeout):
            continue                            # nothing yet, or a slice passed
        except (OSError, EOFError) as exc:
            raise PoolError(f"pool server closed the local stream ({str(exc) or 'end of stream'}"
                            f"): {STREAM_GONE}") from None
        except ProtocolError as exc:
            raise PoolError(f"pool server sent a bad stream message: {exc}") from None
    return pending.pop(0)
