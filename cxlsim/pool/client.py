"""PoolClient: one host's handle on a pool server, with the same methods as LocalPool.

Every request has a deadline (`timeout_s`). No reply in time means the server is down, restarted
or unreachable (or, with CURVE, this client has the wrong server key): PoolError says so, and the
socket is rebuilt (same identity) so a late reply cannot be mistaken for the next one's. Replies
carry the request id; stale ones are dropped.

After attach, a client on the server's machine moves to the server's local stream (a Unix socket,
stream.py) unless `use_stream=False`, and with `use_shm` hands the server a shared-memory window
(shm.py) with the stream's hello: then requests go through the window's mailbox (mailbox.py) and
blocks through its data area. `transport` says which it uses. A closed stream is a PoolError
saying the server restarted or is down.

`exchange` may legitimately wait for slower hosts (or stay parked while others have work):
while waiting it sends heartbeats, and each answer (which lists the hosts that have handed in)
restarts the deadline; only a silent server ends the wait. Between requests, a background thread
heartbeats for an idle host (`keepalive=True`), so a host may compute for as long as it likes.
Requests are serialised by a lock, so a client may also be shared between threads.
"""
from __future__ import annotations

import copy
import math
import os
import select
import socket
import threading
import time
import warnings

import numpy as np
import zmq

from .._core import ffi
from ..errors import PoolError, PoolTimeout, ProtocolError
from . import protocol as P
from .api import LazyDelta, PoolDelta, PoolOp, Release, Traffic
from .endpoint import check_endpoint, is_loopback_endpoint
from .local import as_bytes
from .mailbox import DATA_START, Mailbox
from .shm import DEFAULT_WINDOW_BYTES, ShmWindow
from .spans import Spans
from .stream import (CLIENT_SPIN_US, DOORBELL, STREAM_GONE, WAIT_SLICE_S, MessageReader,
                     is_doorbell, message_prefix, recv_message, send_message, spin_budget_s, tune,
                     wait_in_kernel)

# requests that never go through the mailbox: detach closes the stream its doorbell would use
STREAM_ONLY = frozenset({"detach"})
WAIT_COPY_S = 50e-6     # a wait for the server's copy out of the window sleeps this long a time


def _buffer(data):
    """Bytes-like view of block data without copying it (numpy: C-contiguous bytes)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data)).cast("B")
    try:
        return memoryview(data).cast("B")
    except TypeError:
        return as_bytes(data)     # raises the clear error for non-buffers


class PoolClient:
    def __init__(self, endpoint: str, host_id: int, timeout_s: float = 5.0,
                 server_public_key: bytes | None = None, use_shm: bool | str = "auto",
                 shm_bytes: int = DEFAULT_WINDOW_BYTES, heartbeat_s: float = 1.0,
                 use_stream: bool = True, spin_us: float = CLIENT_SPIN_US,
                 keepalive: bool = True):
        check_endpoint(endpoint, binding=False)
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < math.inf):
            raise PoolError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if use_shm and not (isinstance(shm_bytes, int) and shm_bytes > DATA_START):
            raise PoolError(f"shm_bytes must be an integer above {DATA_START} (the window's "
                            f"mailbox comes first), got {shm_bytes!r}")
        if use_shm is True and not use_stream:
            raise PoolError("use_shm=True needs use_stream=True: the shared-memory window is "
                            "handed to the server with the local stream's hello")
        self.endpoint = endpoint
        self.host_id = host_id
        self.timeout_s = float(timeout_s)
        self.heartbeat_s = heartbeat_s
        # poll this long for a reply before sleeping (local stream only; stream.py: Waiting)
        self.spin_s = spin_budget_s(spin_us, "spin_us")
        self._server_key = server_public_key
        self._identity = b"cxlsim-host-" + os.urandom(12)
        self._ctx = zmq.Context()
        self._sock = None
        self._stream = None                 # the local stream, once attached over one
        self._control = None                # the window's mailbox words, while it has one
        self._mailbox = None                # the same, while requests go through it (a stream)
        self._lent = False                  # block_buffers handed out views of the window
        self._views = Spans()               # those views, less what was written over since
        self._copying = None                # (put id, start, end): a put the server may still copy
        self._lend_at = DATA_START          # where block_buffers hands out views next
        self._want_stream = use_stream
        self._seq = 0
        self._horizon_ns = math.inf        # earliest next event of the other hosts, last we heard
        self._owed = None                   # (LazyDelta, request id, mailed, quantum) to receive
        # a hand-in waiting for its release (hand_in), and a release received for it early
        self._handed: tuple | None = None   # (request id, mailed, quantum, soon)
        self._early_release = None
        # the hand-in sent ahead of that release (hand_in_ahead): (request id, after_ns, next_ns)
        self._ahead: tuple | None = None
        self._handed_quantum = -1           # the barrier of the last hand-in
        #: whether the last release taken took the hand-in sent ahead of it (hand_in_ahead)
        self.ahead_taken = False
        # replies expected while waiting for another (to a hand-in sent ahead, a delta owed
        # while that one's null answer is read), by request id: None until one comes
        self._stash: dict[int, tuple | None] = {}
        self._wake = None                   # this host's wake socket, beside a local stream
        self._horizon_host = -1             # the host holding _horizon_ns, last we heard
        #: times a parked wait of this host was ended early by another host's ring (wake-up)
        self.woken_by_peers = 0
        self._lock = threading.RLock()      # one request at a time, the keep-alive thread's too
        self._last_request = time.monotonic()
        self._keepalive = keepalive
        self._keepalive_stop: threading.Event | None = None
        self._connect()
        self.window = None
        self._insist_shm = use_shm is True          # asked for, not "auto": say when it fails
        if use_shm == "auto":
            # shared memory only helps (and only works) on the server's machine, and travels
            # with the local stream's hello
            use_shm = use_stream and is_loopback_endpoint(endpoint)
        self._want_shm = bool(use_shm)
        #: why this client has no shared-memory window though it wanted one (None: it has one,
        #: or did not want one); set when the local stream opens
        self.window_refused: str | None = None
        self._shm_bytes = shm_bytes
        info = self._call("sync", {})
        self.quantum_ns = info["quantum_ns"]
        self.server_info = info

    # ------------------------------------------------------------------ transport
    def _connect(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.routing_id = self._identity
        if self._server_key is not None:
            sock.curve_serverkey = self._server_key
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.connect(self.endpoint)
        self._sock = sock

    def _send(self, cmd: str, args: dict, frames=(), mailbox_ok: bool = False,
              release_first: bool = True) -> int:
        """Send a request; its id. With mailbox_ok, it goes through the mailbox where it can
        (`self._mailed` says whether it did). A hand-in's release is received first (and kept
        for release()) unless not `release_first`: a hand-in sent ahead of that release, or a
        heartbeat of the wait for a release or a delta."""
        if cmd == "detach":                  # the host leaves the barrier: no release to wait for
            self._handed = self._ahead = None
        elif self._handed is not None and self._early_release is None and release_first:
            try:
                self._early_release = self._receive_release()
            except PoolError as exc:         # (perhaps in the keep-alive thread): release()
                self._early_release = _kept(exc)     # raises it
        if self._owed is not None:           # the reply to an exchange comes first
            self._settle_owed()
        self._last_request = time.monotonic()
        self._seq += 1
        box = self._mailbox if mailbox_ok and not frames else None
        # the hot commands are compact through the mailbox; else msgpack (which may fit it,
        # and which packs small keys tighter where the server's frame limit is low)
        header = box is not None and P.encode_compact_request(self._seq, cmd, args)
        if not header or not box.fits(header) or len(header) > self._frame_limit:
            header = P.encode_request(self._seq, cmd, args)
        self._mailed = box is not None and box.fits(header)
        if self._mailed:
            if box.post(self._seq, header):          # the server sleeps: ring its stream
                self._ring(cmd)
        elif self._stream is not None:
            self._stream_send([header, *frames], cmd)
        else:
            self._sock.send_multipart([header, *frames], copy=False)
        return self._seq

    def _ring(self, cmd: str) -> None:
        self._stream_send(DOORBELL, cmd)

    def _stream_send(self, frames, cmd: str) -> None:
        try:
            send_message(self._stream, frames, self.timeout_s)
        except OSError as exc:
            self._drop_stream()
            raise PoolError(f"pool server {self.endpoint}: local stream failed while "
                            f"sending {cmd} ({exc}): {STREAM_GONE}") from None

    def _next_message(self, deadline: float, spin_s: float = 0.0, wakeable: bool = False):
        """The next reply's frames (buffers), or None at the deadline. `wakeable`: sleep where
        another host's ring can wake this one too, and then poll (a parked host: _await_release)."""
        if self._stream is not None:
            if wakeable and self._wake is not None and not self._stream_pending:
                rung = self._sleep_until_message_or_ring(deadline)
                if rung is None:
                    return None
                if rung:                     # poll for the release, then back here soon
                    spin_s = max(spin_s, self.spin_s)
                    deadline = min(deadline, time.monotonic() + self.spin_s + WAIT_SLICE_S)
            try:
                return recv_message(self._stream_reader, deadline, self._stream_pending, spin_s)
            except PoolError as exc:
                self._drop_stream()
                raise PoolError(f"pool server {self.endpoint}: {exc}") from None
        left = deadline - time.monotonic()
        if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
            return None
        return [f.buffer for f in self._sock.recv_multipart(copy=False)]

    def _sleep_until_message_or_ring(self, deadline: float) -> bool | None:
        """Sleep until the stream has a message (False), another host rings this host's wake
        socket (True), or the deadline (None). A ring means this host's release is due: the
        host that rang hands in the barrier that releases it, so this host polls for the
        release from now on instead of waking for it later."""
        waiter = select.poll()
        waiter.register(self._stream, select.POLLIN)
        waiter.register(self._wake, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready = dict(waiter.poll(math.ceil(min(left, WAIT_SLICE_S) * 1000)))
            if ready.get(self._wake.fileno()):
                self._drain_wake()
                self.woken_by_peers += 1
                return True
            if ready:
                return False

    def _drain_wake(self) -> None:
        if self._wake is None:
            return
        try:
            while self._wake.recv(16):
                pass
        except OSError:                     # drained (BlockingIOError), or gone meanwhile
            pass

    def _open_wake(self, directory: str) -> None:
        """This host's wake socket: a datagram socket in the server's private directory (only
        its user reaches it) that a host handing in may ring to wake this one (_ring_next)."""
        path = os.path.join(directory, f"wake-{self.host_id}")
        wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if os.path.lexists(path):
                os.unlink(path)              # left by an earlier client of this host id
            wake.bind(path)
            wake.setblocking(False)
            self._wake_inode = os.stat(path).st_ino
        except OSError:                      # no wake-ups for this host: it wakes as before
            wake.close()
            return
        self._wake, self._wake_dir = wake, directory

    def _close_wake(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            path = wake.getsockname()
            wake.close()
            try:                             # unless a later client of this host id took it
                if os.stat(path).st_ino == self._wake_inode:
                    os.unlink(path)
            except OSError:
                pass

    def _ring_next(self, host: int, next_ns: float | None) -> None:
        """After a hand-in: wake the host holding this host's horizon if the barrier releases
        it. The barrier runs hosts up to the end of the quantum holding the earliest next
        event; the horizon host is released if its event comes before then, whatever the
        parked hosts hold (a wrong guess only wakes it to poll a while). Its wake-up then
        overlaps the server handling the hand-in instead of following the server's notice."""
        peer, horizon = self._horizon_host, self._horizon_ns
        if self._wake is None or peer < 0 or peer == host or not math.isfinite(horizon):
            return
        first = horizon if next_ns is None else min(next_ns, horizon)
        if horizon < (math.floor(first / self.quantum_ns) + 1) * self.quantum_ns:
            try:
                self._wake.sendto(b"!", os.path.join(self._wake_dir, f"wake-{peer}"))
            except OSError:                  # gone, not local, or its socket is full: no matter
                pass

    @property
    def transport(self) -> str:
        """How requests travel now: "mailbox" (through the shared-memory window, mailbox.py),
        "stream" (local Unix socket) or "zeromq"."""
        if self._mailbox is not None:
            return "mailbox"
        return "stream" if self._stream is not None else "zeromq"

    def _open_stream(self, path: str, token: str) -> None:
        """Send every later request over the server's local stream (same machine only), and
        with use_shm hand the server a shared-memory window with the stream's hello."""
        self._close_window()     # one a server had before (it restarted): this one gets its own
        self.window_refused = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        window = None
        try:
            sock.settimeout(self.timeout_s)
            tune(sock)
            sock.connect(path)
            wait_in_kernel(sock)
            hello = P.encode_stream_hello(token)
            refused = None
            if self._want_shm:
                try:
                    window = ShmWindow.create(self._shm_bytes)
                except OSError as exc:   # no sealed memfds here: the stream without a window
                    refused = f"this host cannot make a sealed shared-memory window ({exc})"
            if window is not None:       # the window's descriptor travels with the hello
                socket.send_fds(sock, [message_prefix([hello]) + hello], [window.fd])
            else:
                send_message(sock, [hello], self.timeout_s)
            limit = max(self.server_info.get("max_frame_bytes", P.DEFAULT_MAX_FRAME_BYTES),
                        P.MAX_HEADER_BYTES * 16)   # a reply header may be large (stats, deltas)
            reader, pending = MessageReader(sock, limit), []
            frames = recv_message(reader, time.monotonic() + self.timeout_s, pending)
            reply = P.decode_reply(frames[0]) if frames is not None else {}
            ok = reply.get("ok")
        except (OSError, PoolError, ProtocolError):
            ok = False
        if not ok:               # another machine's path, or refused: ZeroMQ it is
            sock.close()
            if window is not None:
                window.close()
            return
        self._stream, self._stream_reader, self._stream_pending = sock, reader, pending
        self._open_wake(os.path.dirname(path))
        result = reply.get("result")
        if window is not None and type(result) is dict and result.get("window_refused"):
            refused = f"the pool server refused the window: {result['window_refused']}"
            window.close()
            window = None
        if window is not None:   # the server has mapped it and opened its side of the mailbox
            window.drop_fd()
            self.window = window
            self._control = self._mailbox = Mailbox(window, "host")
        self.window_refused = refused

    def _drop_stream(self) -> None:
        self._mailbox = None                 # no doorbell without the stream
        self._close_wake()
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _timeout(self, cmd: str) -> PoolTimeout:
        # drop whatever might still arrive for the old request (the server, seeing the stream
        # close, answers over ZeroMQ again). The server may still carry the request out, and
        # read or write the window meanwhile: this client gives the window up (sockets from now)
        self._drop_stream()
        if self.window is not None:
            self.window_refused = f"given up after {cmd} timed out (the server may still use it)"
        self._close_window()
        self._connect()
        keys = ""
        if not hasattr(self, "server_info"):     # never heard from it: keys may be the cause
            keys = "; or a wrong server public key" if self._server_key else \
                "; or a server that needs CurveZMQ keys: give server_public_key"
        return PoolTimeout(f"pool server {self.endpoint}: no reply to {cmd} within "
                           f"{self.timeout_s:g} s (server down, restarted or unreachable{keys})")

    def _recv(self, want_id: int, deadline: float, cmd: str, others=None, spin_s: float = 0.0,
              wakeable: bool = False):
        """Reply to request want_id, or None at the deadline. Replies to other requests and
        notices go to `others(msg)` when given, else are dropped (stale replies of timed-out
        requests). `others` returning True ends the wait early with None."""
        if self._stash.get(want_id) is not None:
            msg, rest = self._stash.pop(want_id)
            return self._result(msg, cmd), rest
        while True:
            frames = self._next_message(deadline, spin_s, wakeable)
            if frames is None:
                return None
            if is_doorbell(frames):           # a late ring from a mailbox reply: nothing to read
                continue
            msg = self._decode(frames[0], cmd)
            if self._stashed(msg, frames, want_id):
                continue
            if msg.get("id") != want_id:
                if others is not None and others(msg):
                    return None
                continue
            self._stash.pop(want_id, None)
            return self._result(msg, cmd), frames[1:]

    def _stashed(self, msg: dict, frames, want_id: int) -> bool:
        """Keep a reply expected later (its id in _stash) that came while waiting for another."""
        got = msg.get("id")
        if got == want_id or got not in self._stash:
            return False
        self._stash[got] = (msg, frames[1:])
        return True

    def _decode(self, raw, cmd: str) -> dict:
        try:
            return P.decode_compact_reply(raw, cmd) if P.is_compact(raw) else P.decode_reply(raw)
        except ProtocolError as exc:
            raise PoolError(f"pool server {self.endpoint}: bad reply to {cmd}: {exc}") from None

    def _result(self, msg: dict, cmd: str):
        if not msg["ok"]:
            err = msg["error"]
            raise PoolError(f"pool server {self.endpoint}: {cmd} refused "
                            f"[{err['code']}]: {err['message']}")
        return msg.get("result")

    def _recv_mail(self, want_id: int, until: float, cmd: str, others=None,
                   spin_s: float = 0.0, wakeable: bool = False):
        """As _recv, for a request sent through the mailbox: poll the mailbox for spin_s, then
        sleep on the stream, where the server rings when it posts the reply and where notices
        and heartbeat replies (to `others`) and replies too large for the mailbox come."""
        if self._stash.get(want_id) is not None:   # (came on the stream while waiting for
            return self._recv(want_id, until, cmd)   # another reply)
        box = self._mailbox
        if not box.wait(want_id, spin_s):
            box.sleeping(True)
            try:
                while box.inbound_seq() != want_id:
                    now = time.monotonic()
                    if now >= until:
                        return None
                    frames = self._next_message(min(until, now + WAIT_SLICE_S), 0.0, wakeable)
                    if frames is None or is_doorbell(frames):
                        continue
                    msg = self._decode(frames[0], cmd)
                    if msg.get("id") == want_id:     # too large for the mailbox: sent here
                        return self._result(msg, cmd), frames[1:]
                    if self._stashed(msg, frames, want_id):
                        continue
                    if others is not None and others(msg):
                        return None
            finally:
                box.sleeping(False)
        raw = box.read()
        if not raw:                  # the reply did not fit the mailbox: it is on the stream
            return self._recv(want_id, max(until, time.monotonic() + self.timeout_s), cmd)
        msg = self._decode(raw, cmd)
        if msg.get("id") != want_id:
            raise PoolError(f"pool server {self.endpoint}: the mailbox reply to {cmd} answers "
                            f"request {msg.get('id')!r}, not {want_id}")
        self._stash.pop(want_id, None)
        return self._result(msg, cmd), []

    def _call(self, cmd: str, args: dict, frames=()):
        return self._call_frames(cmd, args, frames)[0]

    def _call_frames(self, cmd: str, args: dict, frames=()):
        with self._lock:
            req = self._send(cmd, args, frames, mailbox_ok=cmd not in STREAM_ONLY)
            deadline = time.monotonic() + self.timeout_s
            recv = self._recv_mail if self._mailed else self._recv
            got = recv(req, deadline, cmd, spin_s=self.spin_s)
            if got is None:
                raise self._timeout(cmd)
            return got

    # ------------------------------------------------------------------ keep-alive
    def _start_keepalive(self) -> None:
        """While attached, a daemon thread sends a heartbeat whenever the host has made no
        request for a third of the server's heartbeat timeout: a host that computes for longer
        than that between requests is not taken for dead (the in-process pool has no such
        timeout, and this client keeps its interface)."""
        if not self._keepalive or self._keepalive_stop is not None:
            return
        interval = self.server_info.get("heartbeat_timeout_s", 10.0) / 3
        stop = self._keepalive_stop = threading.Event()
        self._keepalive_thread = threading.Thread(
            target=self._keep_alive, args=(stop, interval), daemon=True,
            name=f"cxlsim-pool-keepalive-{self.host_id}")
        self._keepalive_thread.start()

    def _keep_alive(self, stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval / 2):
            if time.monotonic() - self._last_request < interval:
                continue
            with self._lock:
                if stop.is_set():
                    return
                try:
                    self._call("heartbeat", {})
                except PoolError:
                    return           # the server is gone or forgot us: the next request says so

    def _stop_keepalive(self) -> None:
        stop, self._keepalive_stop = self._keepalive_stop, None
        if stop is not None:
            stop.set()
            self._keepalive_thread.join()

    def _me(self, host: int) -> None:
        if host != self.host_id:
            raise PoolError(f"this client is host {self.host_id}, not host {host}")

    def _per_item(self, cmd: str, out, n: int):
        """A reply with one entry per item asked for; a server saying otherwise is broken."""
        if type(out) is not list or len(out) != n:
            raise PoolError(f"pool server {self.endpoint}: bad reply to {cmd}: "
                            f"{len(out) if type(out) is list else type(out).__name__} entries "
                            f"for {n} items")
        return out

    @staticmethod
    def _raise_items(cmd: str, keys, errors) -> None:
        bad = [(k, e) for k, e in zip(keys, errors) if e is not None]
        if bad:
            raise PoolError(f"{cmd}: {len(bad)} of {len(keys)} refused; first: {bad[0][1]}")

    def close(self) -> None:
        self._stop_keepalive()
        self._owed = None                    # a LazyDelta still waiting says it never came
        self._handed = self._early_release = self._ahead = None
        self._stash.clear()
        self._drop_stream()
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._close_window()
        self._ctx.term()

    def _close_window(self) -> None:
        # the mailbox words go first: then the window unmaps at once (unless another thread
        # still polls one of them, and then when it stops: never under it)
        self._control = self._mailbox = None
        self._copying = None
        self._lent, self._lend_at = False, DATA_START     # views of it are no longer places
        self._views.clear()
        if self.window is not None:
            self.window.close()
            self.window = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ membership
    def attach(self, host: int, quota_bytes: int = 0, tag: str | None = None) -> None:
        """Join the pool. `tag` (up to 64 characters) names what this host's job must share
        with the other hosts' (a replay passes a hash of its trace and settings): the server
        refuses a host whose tag differs from those of the hosts attached."""
        self._me(host)
        info = self._call("attach", {"host": host, "quota": int(quota_bytes), "tag": tag})
        self.quantum_ns = info["quantum_ns"]
        self.server_info = info
        if self._want_stream and info.get("stream") and self._stream is None:
            self._open_stream(info["stream"], info["stream_token"])
        if self._want_shm and self.window is None:
            if self.window_refused is None:
                self.window_refused = "no local stream to the server (the window travels with " \
                    "its hello): the server is on another machine, or its stream is unreachable"
            if self._insist_shm:
                warnings.warn(f"pool client of host {host}: no shared-memory window "
                              f"({self.window_refused}); it uses {self.transport}",
                              RuntimeWarning, stacklevel=2)
        self._start_keepalive()

    def resize(self, host: int, quota_bytes: int) -> None:
        self._me(host)
        self._call("resize", {"quota": int(quota_bytes)})

    def detach(self, host: int) -> None:
        self._me(host)
        self._stop_keepalive()
        self._call("detach", {})
        self._drop_stream()          # the server closed its end with the reply
        self._close_window()         # the server has let go of it: remove it now, not at close

    def heartbeat(self, host: int) -> None:
        self._me(host)
        self._call("heartbeat", {})

    def sync(self) -> dict:
        """Server time base: current quantum, quantum_ns, capacity (no attach needed)."""
        return self._call("sync", {})

    # ------------------------------------------------------------------ data path
    def put(self, host: int, key: int, data, shared: bool = False) -> None:
        self.put_many(host, [(key, data)], shared)

    def put_many(self, host: int, items, shared: bool = False, raise_on_error: bool = True
                 ) -> list[str | None]:
        """One round trip per window-full (or per batch over sockets). Per item None or the
        reason it was refused; raises PoolError if any was refused unless raise_on_error=False."""
        self._me(host)
        items = [(int(k), _buffer(d)) for k, d in items]
        keys = [k for k, _ in items]
        with self._lock:          # one thread at a time writes the window and tracks its copies
            out = self._put_items(keys, items, shared)
        if raise_on_error and any(out):
            self._raise_items("put", keys, out)
        return out

    def _put_items(self, keys, items, shared) -> list[str | None]:
        if not items:
            return []
        lent = self._lent_places(items) if self._lent else None
        if lent is not None:             # written in place: no copy on this side at all
            out: list[str | None] = []
            for i in range(0, len(items), P.MAX_BATCH):
                places = lent[i:i + P.MAX_BATCH]
                out += self._put_places(keys[i:i + P.MAX_BATCH], shared, places)
            return out
        if self.window is not None and len(items) <= P.MAX_BATCH:
            nbytes = sum(len(b) for _, b in items)
            if nbytes <= self._room:     # the usual case: one request through the window
                return self._put_copied(keys, items, shared, nbytes)
        limit = self._frame_limit
        for key, buf in items:            # refused up front: the server would cut us off
            if len(buf) > limit and not (self.window is not None and len(buf) <= self._room):
                raise PoolError(f"put: block {key} is {len(buf)} B; this server takes blocks up "
                                f"to {limit} B (cxlsim pool serve --max-frame-bytes)")
        out = []
        for chunk, use_window in self._chunks(items):
            chunk_keys = [k for k, _ in chunk]
            if use_window:
                out += self._put_copied(chunk_keys, chunk, shared, sum(len(b) for _, b in chunk))
            else:
                out += self._per_item("put", self._call(
                    "put", {"keys": chunk_keys, "shared": bool(shared), "shm": None},
                    [buf for _, buf in chunk]), len(chunk))
        return out

    def _put_copied(self, keys, items, shared, nbytes: int) -> list[str | None]:
        """Copy the blocks (nbytes in all) into the window one after another, and put them."""
        at = off = self._window_region(nbytes)
        self._reuse(at, at + nbytes)
        window, places = self.window.buf, []
        for _, buf in items:
            n = len(buf)
            window[off:off + n] = buf
            places.append([off, n])
            off += n
        return self._put_places(keys, shared, places, (at, off))

    def _put_places(self, keys, shared, places, region=None) -> list[str | None]:
        """Put blocks that lie in the window at places ([offset, nbytes] each; region: the
        span they cover, when known). Through the mailbox the server replies before it copies
        them out (mailbox.py): until it says it has, this client writes nowhere in that span."""
        out = self._call_frames("put", {"keys": keys, "shared": bool(shared), "shm": places})[0]
        if self._mailed:         # (under the caller's lock: the id and route are this request's)
            self._copying = (self._seq, *(region or (min(off for off, _ in places),
                                                     max(off + n for off, n in places))))
        return self._per_item("put", out, len(keys))

    def _window_region(self, nbytes: int) -> int:
        """Where the next nbytes written into the window go: at the start of the data area, or
        right after the blocks of the last put while the server may still be copying them out
        (double buffering: this client writes the next blocks during that copy, and the pages
        it writes stay few). Waits for the copy only when neither place is free."""
        at = DATA_START
        if self._overlaps_copy(at, nbytes):
            if self._copying[2] + nbytes <= self.window.size:
                at = self._copying[2]
            else:
                self._wait_copied(self._copying[0])
        return at

    def _overlaps_copy(self, at: int, nbytes: int) -> bool:
        """Whether [at, at + nbytes) overlaps blocks the server may still be copying."""
        copying = self._copying
        return copying is not None and at < copying[2] and copying[1] < at + nbytes

    def _wait_copied(self, seq: int) -> None:
        """Until the server has copied put `seq` out of the window. Read from the window's
        words, not the mailbox, which a timeout may have dropped while the copy still runs."""
        box, deadline = self._control, time.monotonic() + self.timeout_s
        if not box.wait_copied(seq, self.spin_s):
            while not box.wait_copied(seq, 0.0):
                if time.monotonic() >= deadline:     # it may yet: the window is given up
                    self.window_refused = f"given up after the server did not copy put {seq} " \
                        f"out of it within {self.timeout_s:g} s"
                    self._close_window()
                    raise PoolTimeout(f"pool server {self.endpoint}: it has not copied put "
                                      f"{seq} out of this host's window within "
                                      f"{self.timeout_s:g} s (server down, stalled or restarted)")
                time.sleep(WAIT_COPY_S)
        self._copying = None

    def block_buffers(self, sizes) -> list[memoryview]:
        """Writable views into this host's shared-memory window, one per size. Write the
        blocks into them (numpy: `np.frombuffer(view, dtype)`) and pass the views to put or
        put_many: the bytes then reach the pool with no copy on this side (the server makes the
        one copy into pool memory). Once passed to put, a view is the pool's: write the next
        blocks into new views. Successive calls hand out the data area in turn, so views stay
        valid until later calls have handed it all out once more, or until this client's next
        get or put of other data, which may reuse the window: a put of a view a get or put
        wrote over is refused, since its bytes are not the ones written into it. (A view whose
        bytes later calls handed out again is the new view's memory: its put stores those.)"""
        if self.window is None:
            raise PoolError("block_buffers needs a shared-memory window: a client on the pool "
                            "server's machine with use_shm")
        sizes = [int(n) for n in sizes]
        if sum(sizes) > self._room or any(n < 1 for n in sizes) or len(sizes) > P.MAX_BATCH:
            raise PoolError(f"block_buffers: {len(sizes)} sizes of {sum(sizes)} B in all; the "
                            f"window holds up to {P.MAX_BATCH} blocks of >= 1 B and "
                            f"{self._room} B in all (PoolClient(shm_bytes=...))")
        with self._lock:
            views, off = [], self._lend_region(sum(sizes))
            bounds = [off]
            for n in sizes:
                views.append(self.window.buf[off:off + n])
                off += n
                bounds.append(off)
            self._views.add_run(bounds)
            self._lent = True
        return views

    def _lend_region(self, nbytes: int) -> int:
        """Where block_buffers' next views go: after the last ones handed out, from the start
        of the data area again when they would not fit; never over blocks still being copied."""
        at = self._lend_at if self._lend_at + nbytes <= self.window.size else DATA_START
        self._lend_at = at + nbytes
        self._reuse(at, at + nbytes)
        if self._overlaps_copy(at, nbytes):
            self._wait_copied(self._copying[0])
        return at

    def _reuse(self, start: int, end: int) -> None:
        """This client (or the server, for its get) is about to write [start, end) of the
        window: views handed out there no longer hold what was written into them."""
        if self._views:
            self._views.cut(start, end)

    def _lent_places(self, items) -> list | None:
        """[offset, nbytes] of each item's buffer in the window's data area, when every buffer
        lies there (views from block_buffers); else None, after copying out any that do, since
        laying out the others could overwrite them. A buffer in the window that is not part of
        a view still unreused is refused: its bytes may be another block's."""
        base = int(ffi.cast("uintptr_t", ffi.from_buffer(self.window.buf)))
        lo, hi = base + DATA_START, base + self.window.size
        places = []
        for key, buf in items:
            at = int(ffi.cast("uintptr_t", ffi.from_buffer(buf)))
            if not (lo <= at and at + len(buf) <= hi):
                places.append(None)
                continue
            at -= base
            if not self._views.holds(at, at + len(buf)):
                raise PoolError(f"put: block {key}'s buffer lies in this host's window but in no "
                                f"view that block_buffers handed out and nothing has reused "
                                f"since (a get, a put of other data or later block_buffers "
                                f"calls reuse the window), so it may hold other bytes: write "
                                f"each block into a fresh view and put it before the next get")
            places.append([at, len(buf)])
        if all(places):
            return places
        for i, place in enumerate(places):
            if place is not None:
                items[i] = (items[i][0], bytes(items[i][1]))
        return None

    @property
    def _frame_limit(self) -> int:
        """The largest frame this server takes (`cxlsim pool serve --max-frame-bytes`)."""
        return self.server_info.get("max_frame_bytes", P.DEFAULT_MAX_FRAME_BYTES)

    @property
    def _room(self) -> int:
        """Bytes of blocks one request can carry through the window (its data area)."""
        return self.window.size - DATA_START

    def _chunks(self, items):
        """Split a batch that one request cannot carry (the usual batch is put whole:
        _put_items) so each request fits the window, or the frame limits of sockets."""
        limit = self._room if self.window is not None else self._frame_limit
        chunk, size, chunk_window = [], 0, False   # chunk_window: the open chunk uses the window
        for item in items:
            n = len(item[1])
            fits_window = self.window is not None and n <= self._room
            if chunk and (size + n > limit or len(chunk) == P.MAX_BATCH
                          or fits_window != chunk_window):
                yield chunk, chunk_window
                chunk, size = [], 0
            if not chunk:
                chunk_window = fits_window
            chunk.append(item)
            size += n
        if chunk:
            yield chunk, chunk_window

    def alloc(self, host: int, key: int, nbytes: int, shared: bool = False) -> None:
        self._me(host)
        out = self._call("alloc", {"keys": [int(key)], "sizes": [int(nbytes)],
                                   "shared": bool(shared)})
        self._raise_items("alloc", [key], self._per_item("alloc", out, 1))

    def get(self, host: int, key: int) -> bytes:
        return self.get_many(host, [key])[0]

    def get_many(self, host: int, keys) -> list[bytes]:
        self._me(host)
        keys = [int(k) for k in keys]
        out = []
        with self._lock:          # the blocks are read out of the window before anyone else
            for i in range(0, max(len(keys), 1), P.MAX_BATCH):     # may write there
                part = keys[i:i + P.MAX_BATCH]
                if not part:
                    break
                use_shm = self.window is not None
                result, frames = self._call_frames("get", {"keys": part, "shm": use_shm})
                if not use_shm:
                    out += [bytes(f) for f in self._per_item("get", frames, len(part))]
                    continue
                try:
                    self._per_item("get", result, len(part))
                    if len(frames) != sum(1 for off, _ in result if off < 0):
                        raise PoolError(f"pool server {self.endpoint}: bad reply to get: "
                                        f"{len(frames)} blocks sent for the places it gave")
                except PoolError:
                    self._views.clear()      # it may have written anywhere in the data area
                    raise
                if self._views:                      # the server wrote these blocks there
                    written = [(off, off + n) for off, n in result if off >= 0]
                    if written:
                        self._reuse(min(a for a, _ in written), max(b for _, b in written))
                frames = iter(frames)
                for off, n in result:
                    out.append(bytes(next(frames)) if off < 0 else
                               self.window.buf[off:off + n].tobytes())
        return out

    def free(self, host: int, key: int) -> None:
        self.free_many(host, [key])

    def free_many(self, host: int, keys, raise_on_error: bool = True) -> list[str | None]:
        self._me(host)
        keys = [int(k) for k in keys]
        out = self._per_item("free", self._call("free", {"keys": keys}), len(keys))
        if raise_on_error:
            self._raise_items("free", keys, out)
        return out

    def share(self, host: int, key: int) -> None:
        self._me(host)
        self._raise_items("share", [key],
                          self._per_item("share", self._call("share", {"keys": [int(key)]}), 1))

    def lookup(self, host: int, keys) -> int:
        self._me(host)
        return self._call("lookup", {"keys": [int(k) for k in keys]})

    def pin(self, host: int, keys) -> None:
        self._me(host)
        self._call("pin", {"keys": [int(k) for k in keys]})

    def unpin(self, host: int, keys) -> None:
        self._me(host)
        self._call("unpin", {"keys": [int(k) for k in keys]})

    def stats(self) -> dict:
        return self._call("stats", {})

    # ------------------------------------------------------------------ replay path
    def exchange(self, host: int, quantum: int, ops: list[PoolOp],
                 next_ns: float | None = None) -> PoolDelta:
        """Hand in this host's ops for `quantum`; blocks until every attached host has."""
        got = self.exchange_lazy(host, quantum, ops, next_ns)
        return got if isinstance(got, PoolDelta) else got.result()

    def exchange_lazy(self, host: int, quantum: int, ops: list[PoolOp],
                      next_ns: float | None = None) -> PoolDelta | LazyDelta:
        """As exchange, but a parked host returns as soon as the server has scheduled its
        release (a `soon` notice, protocol.md): a LazyDelta with the schedule, whose pool
        changes arrive while the host runs (`result()` waits for them; so does this client's
        next request). A host that looks at the pool only when it must (PoolSide) runs its
        quantum while the server applies the barrier's ops."""
        self.hand_in(host, quantum, ops, next_ns)
        return self.release()

    def hand_in(self, host: int, quantum: int, ops: list[PoolOp],
                next_ns: float | None = None) -> None:
        """The first half of exchange_lazy: send the hand-in and return at once. release()
        waits for its release; meanwhile the host may run what needs no pool state (a
        replay host runs its next quantum ahead: replay.run_quanta)."""
        self._me(host)
        wire, next_ns = self._ops_wire(host, ops), _next_ns_wire(next_ns)
        with self._lock:          # the keep-alive thread waits: exchange sends its own heartbeats
            if self._handed is not None or self._early_release is not None:
                raise PoolError(f"host {host} handed in quantum {quantum} before receiving the "
                                f"release of its last hand-in")
            self._drain_wake()           # a ring from before this hand-in is stale
            self._handed_quantum = quantum
            req = self._send("exchange", {"quantum": int(quantum), "ops": wire,
                                          "next_ns": next_ns}, mailbox_ok=True)
            mailed = self._mailed        # (the heartbeats of a long wait go beside the mailbox)
            self._ring_next(host, next_ns)
            # poll, not sleep, when the release should come at once: this host's next event
            # is the earliest of all it knows of
            soon = next_ns is not None and next_ns < self._horizon_ns
            self._handed = (req, mailed, quantum, soon)

    def hand_in_ahead(self, host: int, ops: list[PoolOp], next_ns: float | None,
                      after_ns: float) -> None:
        """While the release of the last hand_in is on the way: the hand-in of the barrier
        after it, which the server takes if that release runs this host until exactly after_ns
        (the end of the quantum the host ran ahead: replay._run_ahead). release() then returns
        that release and sets `ahead_taken`; if it was taken, the next release() is the one of
        this hand-in, else the host hands in as usual (protocol.md, Handing in ahead)."""
        self._me(host)
        wire, next_ns = self._ops_wire(host, ops), _next_ns_wire(next_ns)
        with self._lock:
            if (self._handed is None and self._early_release is None) or self._ahead is not None:
                raise PoolError(f"host {host} handed in ahead without a hand-in whose release "
                                f"it has not taken")
            req = self._send("exchange_ahead", {"follows": self._handed_quantum, "ops": wire,
                                                "next_ns": next_ns, "after_ns": float(after_ns)},
                             release_first=False)
            early = self._early_release      # (after _send: receiving a delta may set it)
            self._stash[req] = None
            self._ahead = (req, float(after_ns), next_ns)
            if early is not None and not isinstance(early, Exception):
                self._resolve_ahead(early)   # (a heartbeat received that release meanwhile)

    def _resolve_ahead(self, release) -> None:
        """The release of the hand-in before the one sent ahead has come: the server took the
        latter iff the release runs this host until its after_ns (it decides by the same rule).
        Taken, it is now the hand-in waiting for its release; else its null answer is read."""
        (req, after_ns, next_ns), self._ahead = self._ahead, None
        self.ahead_taken = release.run_until_ns == after_ns
        if self.ahead_taken:
            soon = next_ns is not None and next_ns < release.horizon_ns
            self._handed = (req, False, release.quantum + 1, soon)
            self._handed_quantum = release.quantum + 1
            return
        if self._owed is not None:   # the release's delta may come first, on the same channel
            self._stash.setdefault(self._owed[1], None)
        got = self._recv(req, time.monotonic() + self.timeout_s, "exchange_ahead")
        if got is None:
            raise self._timeout("exchange_ahead")
        if got[0] is not None:
            raise PoolError(f"pool server {self.endpoint}: took a hand-in sent ahead of a "
                            f"release that ran this host to {release.run_until_ns:g} ns, not "
                            f"{after_ns:g} ns")

    @staticmethod
    def _ops_wire(host: int, ops: list[PoolOp]) -> list[list]:
        """A hand-in's ops column by column (protocol.OPS): the server checks each column in
        one pass."""
        for op in ops:
            if op.host != host:
                raise PoolError(f"op {op} belongs to host {op.host}, not to this host {host}")
        return [[float(o.t_ns) for o in ops], [int(o.seq) for o in ops], [o.kind for o in ops],
                [int(o.key) for o in ops], [int(o.nbytes) for o in ops],
                [bool(o.shared) for o in ops]]

    def release(self) -> PoolDelta | LazyDelta:
        """The second half of exchange_lazy: the release of the last hand_in."""
        with self._lock:
            got, self._early_release = self._early_release, None
            if isinstance(got, Exception):
                raise got
            if got is None:
                if self._handed is None:
                    raise PoolError("release() without a hand-in waiting for one")
                got = self._receive_release()
            self._horizon_ns = got.horizon_ns
        return got

    def _receive_release(self):
        """Wait for the release of the waiting hand-in (under the lock)."""
        (req, mailed, quantum, soon), self._handed = self._handed, None
        if self._owed is not None:     # the delta of the release before (taken ahead) first
            self._settle_owed()
        got = self._await_release(req, mailed, quantum, soon, early=True)
        if isinstance(got, Release):
            got = LazyDelta(got, self._settle_owed)
            self._owed = (got, req, mailed, quantum)
        if self._ahead is not None:
            self._resolve_ahead(got)
        return got

    def _settle_owed(self) -> None:
        """Receive the delta of a release exchange_lazy returned early, before this client
        sends or waits for anything else."""
        with self._lock:
            owed, self._owed = self._owed, None
            if owed is not None:
                lazy, req, mailed, quantum = owed
                try:
                    lazy.deliver(self._await_release(req, mailed, quantum, True, early=False))
                except PoolError as exc:    # the keep-alive thread may be the one receiving
                    lazy.fail(_kept(exc))
                    raise

    def _await_release(self, req: int, mailed: bool, quantum: int, soon: bool, early: bool):
        """Wait for the release of exchange `req`, heartbeating while parked: its PoolDelta, or
        with `early` the Release of a `soon` notice if that comes first. Polls once the release
        is due soon (`soon`, or such a notice), else sleeps."""
        # through the mailbox, heartbeats and notices still travel over the stream beside it
        recv = self._recv_mail if mailed else self._recv
        deadline = time.monotonic() + self.timeout_s
        alive, schedule = [], []
        hb_out = False

        def seen(msg) -> bool:          # True: stop waiting on the socket (return or poll)
            alive.append(msg)
            if not P.is_soon_notice(msg, quantum):
                return False
            if early:
                try:
                    schedule.append(Release(*P.notice_release(msg)))
                except ProtocolError as exc:
                    raise PoolError(f"pool server {self.endpoint}: bad notice: {exc}") from None
                return True
            return not soon
        while True:
            slice_end = min(deadline, time.monotonic() + self.heartbeat_s)
            got = recv(req, slice_end, f"exchange of quantum {quantum}", others=seen,
                       spin_s=self.spin_s if soon else 0.0, wakeable=True)
            if got is not None:
                try:
                    delta = delta_from_wire(got[0])
                except ProtocolError as exc:
                    raise PoolError(f"pool server {self.endpoint}: bad delta for quantum "
                                    f"{quantum}: {exc}") from None
                self._horizon_host = delta.horizon_host     # whom the next hand-in may wake
                return delta
            if schedule:
                return schedule[0]
            if any(m.get("ok") for m in alive):
                deadline = time.monotonic() + self.timeout_s   # the server answers: keep waiting
                hb_out = False
            soon = soon or any(P.is_soon_notice(m, quantum) for m in alive)
            alive.clear()
            if time.monotonic() >= deadline:
                raise self._timeout(f"exchange of quantum {quantum}")
            if not hb_out and time.monotonic() >= slice_end:   # a long wait: say we are alive
                self._send("heartbeat", {}, release_first=False)   # (this wait is for one)
                hb_out = True


def _next_ns_wire(next_ns: float | None) -> float | None:
    """A hand-in's next event time as sent: null for none (or infinity)."""
    return None if next_ns is None or not math.isfinite(next_ns) else float(next_ns)


def _kept(exc: Exception) -> Exception:
    """An error to raise later, without the frames it was raised in: they may hold views of the
    shared-memory window, and an error kept past close() would keep them after the window is
    unmapped (a crash when the garbage collector reaches them)."""
    kept = copy.copy(exc)            # (the original goes on up with its frames)
    kept.__context__ = kept.__cause__ = None
    return kept.with_traceback(None)


def delta_from_wire(d) -> PoolDelta:
    """The PoolDelta a server sent (ProtocolError if any field is malformed)."""
    d = P.check_delta(d)
    inf = float("inf")
    return PoolDelta(d["quantum"], tuple(d["added"]), tuple(d["removed"]),
                     tuple(tuple(r) for r in d["rejected"]), d["used_bytes"], d["capacity_bytes"],
                     tuple((h, ns) for h, ns in d["coherence_ns"]),
                     inf if d["next_ns"] is None else d["next_ns"],
                     inf if d["run_until_ns"] is None else d["run_until_ns"],
                     inf if d["horizon_ns"] is None else d["horizon_ns"],
                     d["horizon_host"], tuple(map(Traffic, *d["traffic"])))
