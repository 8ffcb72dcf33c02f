"""The mailbox: requests and replies through a host's shared-memory window, not a socket.

Why: a socket round trip between two polling Python processes costs 60-70 us here, and a 64 KiB
put 100 us; the same request and reply through shared memory take about 10 us
(docs/performance.md). So a host on the server's machine that has a window and a local stream
posts each request's header in its window, and the server, which polls its hosts' mailboxes
while it polls its sockets, posts the reply header back. Block bytes already travel through the
window's data area; the socket is left for waking a sleeper and for what does not fit.

Window layout (the host creates the window, shm.py): a control page, a request slot, a reply
slot, then the data area (DATA_START onwards) that puts and gets use.

  control page, 64-bit words each on its own cache line:
    request seq, request length   written by the host
    reply seq, reply length       written by the server
    server sleeping               raised by the server before it sleeps on its sockets
    host sleeping                 raised by the host before it sleeps on its stream
    copied                        the last put whose blocks the server has copied out

Posting writes the message, then its length, then its sequence number (the request id), then
reads the peer's sleeping word: raised, the poster rings the peer's socket with a doorbell (an
empty stream message). A sleeper raises its word, then looks at the sequence number once more
before it sleeps. The words are sequentially consistent atomics (csrc/mailbox.c), so a post and
a sleeper never both miss each other.

Puts through the mailbox are answered before their blocks are copied out of the window: the
server checks and accounts them, posts the reply, copies, then sets the copied word, all before
it looks at any other request. So the host writes its next blocks (elsewhere in the window)
while the server copies, and nothing anyone reads can see the difference; the host waits for
the copied word only to write over blocks still being copied (PoolClient._window_region).

A reply of length 0 means "the reply went over the stream" (a header larger than the reply slot,
or blocks that did not fit the data area). A request larger than its slot goes over the stream.
The server copies a request out of the window before reading it and checks its length: a host
can change its window at any time, and can only confuse itself by doing so.
"""
from __future__ import annotations

from .._core import ffi, lib
from .shm import ShmWindow

CONTROL_BYTES = 4096
REQUEST_BYTES = 256 << 10
REPLY_BYTES = 256 << 10
REQUEST_AT = CONTROL_BYTES
REPLY_AT = REQUEST_AT + REQUEST_BYTES
DATA_START = REPLY_AT + REPLY_BYTES          # block bytes of puts and gets from here on

# word indexes (8-byte words) in the control page: one cache line (8 words) apart
_REQ_SEQ, _REQ_LEN, _REP_SEQ, _REP_LEN, _SERVER_SLEEPING, _HOST_SLEEPING = 0, 1, 8, 9, 16, 24
_COPIED = 32

# side -> (outbound seq, length, area, size), (inbound seq, length, area, size), my sleeping
# word, the peer's
_SIDES = {
    "host": ((_REQ_SEQ, _REQ_LEN, REQUEST_AT, REQUEST_BYTES),
             (_REP_SEQ, _REP_LEN, REPLY_AT, REPLY_BYTES), _HOST_SLEEPING, _SERVER_SLEEPING),
    "server": ((_REP_SEQ, _REP_LEN, REPLY_AT, REPLY_BYTES),
               (_REQ_SEQ, _REQ_LEN, REQUEST_AT, REQUEST_BYTES), _SERVER_SLEEPING, _HOST_SLEEPING),
}


class Mailbox:
    """One side ("host" or "server") of the mailbox in `window`.

    It holds the window's mapping for as long as it lives (a thread still polling one of its
    words must not see the window unmapped): drop every reference to it before closing the
    window, and the window then unmaps at once."""

    def __init__(self, window: ShmWindow, side: str):
        if window.size <= DATA_START:
            raise ValueError(f"a window needs more than {DATA_START} B for a mailbox")
        self.window = window
        self._buf = window.buf                  # (outlives window.close() while this lives)
        self._raw = ffi.from_buffer(self._buf)
        words = ffi.cast("uint64_t *", self._raw)
        (out_seq, out_len, self._out_at, self.out_bytes), \
            (in_seq, in_len, self._in_at, self._in_bytes), mine, peer = _SIDES[side]
        self._out_seq, self._out_len = words + out_seq, words + out_len
        self._in_seq, self._in_len = words + in_seq, words + in_len
        self._my_sleep, self._peer_sleep = words + mine, words + peer
        self._copied = words + _COPIED

    def post(self, seq: int, message) -> bool:
        """Publish `message` (at most out_bytes) as number `seq`. True: the peer sleeps, ring it."""
        n = len(message)
        self._buf[self._out_at:self._out_at + n] = message
        return bool(lib.cxl_mbox_post(self._out_len, n, self._out_seq, seq, self._peer_sleep))

    def fits(self, message) -> bool:
        return len(message) <= self.out_bytes

    def inbound_seq(self) -> int:
        """Sequence number of the last message posted to this side."""
        return lib.cxl_mbox_load(self._in_seq)

    def wait(self, seq: int, spin_s: float) -> bool:
        """Poll up to spin_s (GIL released) for message `seq`; True once it is there."""
        return bool(lib.cxl_mbox_wait(self._in_seq, seq, spin_s))

    def read(self) -> bytes | None:
        """A copy of the last message posted to this side; None if its length word is out of
        range (only a host scribbling on its own window gets that)."""
        n = lib.cxl_mbox_load(self._in_len)
        if n > self._in_bytes:
            return None
        return self._buf[self._in_at:self._in_at + n].tobytes()

    def sleeping(self, asleep: bool) -> None:
        """Raise (before sleeping on the socket) or lower this side's sleeping word."""
        lib.cxl_mbox_store(self._my_sleep, 1 if asleep else 0)

    def copied(self, seq: int) -> None:
        """Server: the blocks of put `seq` are out of the window (they were copied after the
        reply, so the host could go on meanwhile)."""
        lib.cxl_mbox_store(self._copied, seq)

    def wait_copied(self, seq: int, spin_s: float) -> bool:
        """Host: poll up to spin_s for the server to have copied put `seq` (or a later one)
        out of the window."""
        return bool(lib.cxl_mbox_wait_reach(self._copied, seq, spin_s))


class Inboxes:
    """The server's look at every host's mailbox at once: which have a request it has not
    taken, found in one call into C however many hosts there are (the server looks between
    every poll of its sockets). Each mailbox is watched for an owner (the server's host)."""

    def __init__(self):
        self.boxes: list[Mailbox] = []
        self.owners: list = []
        self._words = ffi.new("uint64_t *[]", 0)
        self._seen = ffi.new("uint64_t[]", 0)

    def _rebuild(self, seen: list[int]) -> None:
        self._words = ffi.new("uint64_t *[]", [b._in_seq for b in self.boxes])
        self._seen = ffi.new("uint64_t[]", seen)

    def add(self, box: Mailbox, owner) -> None:
        """Watch box for owner; whatever it holds now is not a request."""
        seen = list(self._seen) + [box.inbound_seq()]
        self.boxes.append(box)
        self.owners.append(owner)
        self._rebuild(seen)

    def remove(self, box: Mailbox) -> None:
        i = self.boxes.index(box)
        seen = list(self._seen)
        del self.boxes[i], self.owners[i], seen[i]
        self._rebuild(seen)

    def next_new(self, start: int = 0) -> int:
        """Index of the first mailbox from `start` on with a request not taken yet, or -1."""
        return lib.cxl_mbox_changed(self._words, self._seen, start, len(self.boxes))

    def take(self, i: int) -> tuple:
        """The request waiting in mailbox i: (its owner, its sequence number, a copy of it or
        None)."""
        box = self.boxes[i]
        seq = box.inbound_seq()
        self._seen[i] = seq
        return self.owners[i], seq, box.read()
