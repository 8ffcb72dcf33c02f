"""The local stream: the pool's messages over a Unix-domain socket, for hosts on the server's machine.

Why it exists: a ZeroMQ round trip passes through an I/O thread at each end, so a quantum barrier
of four host processes and a server on a 2-core machine costs about 0.4-0.8 ms over ZeroMQ and
about 0.1 ms over a plain Unix socket (docs/performance.md). ZeroMQ stays the way in: a host
attaches over it (with CurveZMQ if configured), the attach reply names the server's stream socket
and a one-time token, and a host on the same machine may then connect there, present the token,
and send every later request over the stream instead. Hosts elsewhere never see the difference.

A message is the same frames as over ZeroMQ (protocol.py: one msgpack header, then data frames),
preceded by a little-endian u32 frame count and one u32 length per frame. The socket lives in a
directory only the server's user can enter, and a stream is served only after a valid token.
"""
from __future__ import annotations

import socket
import struct
import time

from ..errors import PoolError, ProtocolError

_U32 = struct.Struct("<I")
MAX_FRAMES = (1 << 16) + 1          # a header and one data frame per key of a full batch
# bytes per recv: Python allocates the full size for every call, and a buffer past glibc's mmap
# threshold (128 KiB) costs a map and unmap each time, tripling a small round trip
READ_BYTES = 64 << 10


def message_prefix(frames) -> bytes:
    lengths = [len(memoryview(f).cast("B")) if not isinstance(f, bytes) else len(f)
               for f in frames]
    return struct.pack(f"<{len(lengths) + 1}I", len(lengths), *lengths)


def send_message(sock: socket.socket, frames) -> None:
    """Write one message; blocks (up to the socket's timeout) until the kernel took all of it."""
    parts = [memoryview(message_prefix(frames))]
    parts += [memoryview(f).cast("B") for f in frames]
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts and sent:
            parts[0] = parts[0][sent:]


class MessageReader:
    """Cuts a byte stream into messages; refuses frame counts or sizes over the limits."""

    def __init__(self, max_frame_bytes: int):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[list[memoryview]]:
        self._buf += data
        out = []
        while True:
            msg = self._take()
            if msg is None:
                return out
            out.append(msg)

    def _take(self):
        buf = self._buf
        if len(buf) < 4:
            return None
        n = _U32.unpack_from(buf)[0]
        if not 1 <= n <= MAX_FRAMES:
            raise ProtocolError(f"stream message with {n} frames (1..{MAX_FRAMES} allowed)")
        head = 4 + 4 * n
        if len(buf) < head:
            return None
        lengths = struct.unpack_from(f"<{n}I", buf, 4)
        if max(lengths) > self.max_frame_bytes:
            raise ProtocolError(f"stream frame of {max(lengths)} B exceeds the "
                                f"{self.max_frame_bytes} B limit")
        end = head + sum(lengths)
        if len(buf) < end:
            return None
        body = bytes(buf[head:end])
        del buf[:end]
        frames, off, view = [], 0, memoryview(body)
        for length in lengths:
            frames.append(view[off:off + length])
            off += length
        return frames


def recv_message(sock: socket.socket, reader: MessageReader, deadline: float, pending: list):
    """Next message from a blocking client socket, or None at the deadline. `pending` holds
    messages already cut from earlier reads."""
    while not pending:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(READ_BYTES)
        except socket.timeout:
            return None
        except OSError as exc:
            raise PoolError(f"pool server closed the local stream ({exc}): restarted or down")
        if not data:
            raise PoolError("pool server closed the local stream: restarted or down")
        try:
            pending.extend(reader.feed(data))
        except ProtocolError as exc:
            raise PoolError(f"pool server sent a bad stream message: {exc}") from None
    return pending.pop(0)
