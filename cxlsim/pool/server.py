"""The pool server: a ZeroMQ ROUTER in front of one LocalPool, plus a local stream (stream.py)
that attached hosts on the same machine may switch to.

One thread, one loop: poll the ROUTER and the streams with a short timeout, decode and check each
request (protocol.py), apply it to the pool, reply on the connection it came from. A bad frame
gets an error reply and changes nothing; an unexpected exception is a server bug, answered with
an `internal` error while the server keeps serving.

Connections are bound to hosts at attach: the host of every later request is the one its
connection attached as, so a client cannot act for another host. Any request refreshes its host's
heartbeat; a host silent for `heartbeat_timeout_s` is detached as if it had left (its private
blocks and pins freed, shared blocks others reference kept) and the quantum barrier goes on
without it.
"""
from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import queue
import socket
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import zmq

from ..errors import PoolError, ProtocolError
from . import protocol as P
from .api import PoolOp
from .endpoint import check_endpoint, is_loopback_endpoint
from .local import LocalPool
from .mailbox import DATA_START, REPLY_BYTES, Inboxes, Mailbox
from .shm import ShmWindow
from .stream import (DOORBELL, ONE_FRAME_HEAD, SERVER_SPIN_US, MessageReader, is_doorbell,
                     send_message, spin_budget_s, tune)

POLL_MS = 50
HELLO_BYTES = 256              # a stream hello is far smaller
HELLO_WAIT_S = 2.0             # an unbound stream is closed after this long
MAX_UNBOUND_STREAMS = 64
# while polling, mailboxes are looked at this often per look at the sockets: a look at a mailbox
# costs well under a microsecond, a poll of the sockets a few
MAIL_LOOKS = 16
# the sockets are polled at least once per this many rounds of mailbox requests, so hosts that
# keep their mailboxes busy cannot starve the hosts that use sockets
MAIL_ROUNDS = 8
ACTIVE_S = 0.01                # a host that sent nothing for this long is idle (no polling for it)


def check_bind(endpoint: str, curve: bool, insecure: bool) -> None:
    check_endpoint(endpoint, binding=True)
    if not is_loopback_endpoint(endpoint) and not curve and not insecure:
        raise PoolError(f"refusing to bind {endpoint}: not a loopback address. Give CurveZMQ "
                        f"keys (--curve-secret-key, see `cxlsim pool keygen`) or pass --insecure "
                        f"to serve unauthenticated on the network")


@dataclass
class _Conn:
    host: int
    last_seen: float
    window: ShmWindow | None = None
    token: str = ""                      # what this host presents to bind a local stream
    stream: "_Stream | None" = None      # when bound, every reply goes there
    released: float = 0.0                # when a barrier last released it (it runs from then)
    control: Mailbox | None = None       # the mailbox words of the window (mailbox.py)
    tag: str | None = None               # what the host's job must share with the others
    mailbox: Mailbox | None = None       # the same, while requests may come through it
    ident: bytes = b""


class _MailReply:
    """Where the reply to a request that came through a host's mailbox goes."""
    __slots__ = ("conn", "seq")

    def __init__(self, conn: _Conn, seq: int):
        self.conn, self.seq = conn, seq


class _FdCloser:
    """Closes descriptors that peers sent with a hello and the server does not keep. Plain files
    (windows) are closed at once; anything else on a thread of its own, since closing some kinds
    blocks (a socket with SO_LINGER and unsent data) and the serve loop must not."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def close(self, fd: int) -> None:
        try:
            plain = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            return                       # not open any more
        if plain:
            os.close(fd)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="cxlsim-pool-fd-closer")
            self._thread.start()
        self._queue.put(fd)

    def _run(self) -> None:
        while True:
            fd = self._queue.get()
            try:
                os.close(fd)
            except OSError:
                pass


class _Stream:
    """One accepted local-stream connection; `ident` is set once it presented a valid token.
    Until then it may send one small hello (with at most one descriptor: its shared-memory
    window) and nothing else, and only for HELLO_WAIT_S."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader: MessageReader | None = None     # once bound
        self.hello = b""                # the hello's bytes so far
        self.fds: list[int] = []        # descriptors that came with them
        self.ident: bytes | None = None
        self.opened = time.monotonic()


class PoolServer:
    def __init__(self, pool: LocalPool, bind: str, heartbeat_timeout_s: float = 10.0,
                 curve_secret_key: bytes | None = None, insecure: bool = False,
                 max_frame_bytes: int = P.DEFAULT_MAX_FRAME_BYTES, log=sys.stderr,
                 spin_us: float = SERVER_SPIN_US):
        check_bind(bind, curve_secret_key is not None, insecure)
        if not heartbeat_timeout_s > 0:
            raise PoolError(f"heartbeat timeout must be > 0 s, got {heartbeat_timeout_s}")
        self.pool = pool
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.log = log
        # after handling requests, poll this long before sleeping, while a core is left for a
        # running host (stream.py: Waiting)
        self.spin_s = spin_budget_s(spin_us, "spin_us")
        self._cores = len(os.sched_getaffinity(0))     # the cores this process may run on
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)   # a client's new socket takes its identity
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # replies to vanished peers are dropped
        # hard cap in libzmq: a peer sending a far larger message is disconnected, not buffered
        self.sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_frame_bytes + P.MAX_HEADER_BYTES)
        if curve_secret_key is not None:
            self.sock.curve_secretkey = curve_secret_key
            self.sock.curve_publickey = zmq.curve_public(curve_secret_key)
            self.sock.curve_server = True
        try:
            self.sock.bind(bind)
        except zmq.ZMQError as exc:            # in use, a missing directory, no such address
            self.sock.close(0)
            self.ctx.term()
            raise PoolError(f"cannot bind {bind}: {exc}") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._conns: dict[bytes, _Conn] = {}     # identity -> attached host
        self._by_host: dict[int, bytes] = {}
        # host -> (id of its pending exchange request, the barrier it handed in, its stream)
        self._waiting: dict[int, tuple] = {}
        self._released: dict[int, tuple[int, dict]] = {}  # host -> (barrier, last release sent)
        # host -> its hand-in sent ahead of a release (exchange_ahead): (request id, the barrier
        # it follows, ops, next_ns, after_ns, reply route)
        self._ahead: dict[int, tuple] = {}
        self._open_stream_listener()
        self._via: _Stream | None = None      # the stream the request being handled came over
        self._after = None                    # what the handler leaves for after the reply
        # command -> handler, for every command an attached host may send
        self._commands = {cmd: getattr(self, f"_cmd_{cmd}") for cmd in P.COMMANDS
                          if hasattr(self, f"_cmd_{cmd}")}
        self._stop = False
        self.served = 0
        self.errors = 0

    # ------------------------------------------------------------------ loop
    def stop(self, *_):
        self._stop = True

    def serve(self, duration_s: float | None = None) -> None:
        end = None if duration_s is None else time.monotonic() + duration_s
        poller = self._poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self._listener is not None:
            poller.register(self._listener, zmq.POLLIN)
        next_reap = 0.0
        busy, mail_rounds = False, 0
        while not self._stop and (end is None or time.monotonic() < end):
            # right after work, the next request is likely close behind: poll for it
            events = self._spin(poller) if busy and self.spin_s else []
            if events:
                mail_rounds = 0
            elif not self._mail_waiting():
                events, mail_rounds = self._sleep(poller), 0
            elif mail_rounds >= MAIL_ROUNDS:     # mail keeps coming: the sockets get a turn
                events, mail_rounds = poller.poll(0), 0
            else:
                mail_rounds += 1
            busy = self._serve_mail() or bool(events)
            for what, _ in events:
                if what is self.sock:
                    # drain what is queued, but keep reaping even under a flood
                    for _ in range(256):
                        try:
                            msg = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(msg[0].bytes, [f.buffer for f in msg[1:]])
                elif self._listener is not None and what == self._listener.fileno():
                    self._accept_stream()          # (plain sockets poll as their descriptor)
                elif what in self._streams:
                    self._read_stream(self._streams[what])
            now = time.monotonic()
            if now >= next_reap:         # every POLL_MS, not after every request
                self._reap()
                next_reap = now + POLL_MS / 1000

    def _should_spin(self) -> bool:
        """Whether to poll for the next request: some but fewer hosts than cores are active
        (sent a request or were released within ACTIVE_S, and are not parked in a barrier), so
        a request is likely due soon and polling still leaves each of them a core."""
        now = time.monotonic()
        active = sum(1 for c in self._conns.values()
                     if now - max(c.last_seen, c.released) < ACTIVE_S
                     and c.host not in self._waiting)
        return 0 < active < self._cores

    def _spin(self, poller) -> list:
        """Poll without sleeping for up to spin_s when _should_spin; the events, or [] (also
        as soon as a mailbox has a request)."""
        if not self._should_spin():
            return []
        until = time.perf_counter() + self.spin_s
        while time.perf_counter() < until and not self._stop:
            for _ in range(MAIL_LOOKS if self._inbox.boxes else 0):
                if self._mail_waiting():
                    return []
            events = poller.poll(0)
            if events:
                return events
        return []

    def _sleep(self, poller) -> list:
        """Wait up to POLL_MS for the sockets. Hosts with a mailbox see the server's sleeping
        word raised meanwhile and ring its stream when they post (mailbox.py)."""
        boxes = list(self._inbox.boxes)
        for box in boxes:
            box.sleeping(True)
        try:
            if self._mail_waiting():        # posted before the word went up
                return []
            return poller.poll(POLL_MS)
        finally:
            for box in boxes:
                box.sleeping(False)

    # ------------------------------------------------------------------ mailboxes
    def _mail_waiting(self) -> bool:
        return self._inbox.next_new() >= 0

    def _serve_mail(self) -> bool:
        """Handle the request waiting in each host's mailbox, if any; whether there was one."""
        i = self._inbox.next_new()
        served = i >= 0
        while i >= 0:
            conn, seq, raw = self._inbox.take(i)
            via = _MailReply(conn, seq)
            if raw is None:
                self._via = via
                self._error(conn.ident, None, P.E_FRAME, "mailbox request length is out of range")
            else:
                self._handle(conn.ident, [raw], via)
            # one request per host a round; a host dropped meanwhile shifts the rest down by
            # one, and one of them may wait for the next round
            i = self._inbox.next_new(i + 1)
        return served

    def _open_mailbox(self, conn: _Conn) -> None:
        conn.mailbox = conn.control
        self._inbox.add(conn.mailbox, conn)

    def _close_mailbox(self, conn: _Conn) -> None:
        if conn.mailbox is not None:
            self._inbox.remove(conn.mailbox)
            conn.mailbox = None

    def _close_window(self, conn: _Conn) -> None:
        self._close_mailbox(conn)
        conn.control = None       # its words hold the mapping: they go first (mailbox.py)
        if conn.window is not None:
            conn.window.close()

    def _ring(self, conn: _Conn) -> None:
        """Wake a host sleeping on its stream: its mailbox has a reply."""
        if conn.stream is not None:
            try:
                send_message(conn.stream.sock, DOORBELL, self.heartbeat_timeout_s)
            except (OSError, ValueError) as exc:
                print(f"cxlsim pool: local stream closed ({exc})", file=self.log)
                self._close_stream(conn.stream)

    def close(self) -> None:
        for conn in self._conns.values():
            self._close_window(conn)
        self._conns.clear()
        for stream in list(self._streams.values()):
            self._close_stream(stream)
        if self._listener is not None:
            self._listener.close()
            shutil.rmtree(self._stream_dir, ignore_errors=True)
        self.sock.close(0)
        self.ctx.term()

    # ------------------------------------------------------------------ local streams
    def _open_stream_listener(self) -> None:
        self._streams: dict[int, _Stream] = {}            # by file descriptor
        self._fd_closer = _FdCloser()
        self._inbox = Inboxes()                 # the mailboxes of hosts that use one
        self._poller = None
        # mkdtemp makes a directory only this user can enter: other users cannot even connect
        self._stream_dir = tempfile.mkdtemp(prefix="cxlsim-pool-")
        self.stream_path = os.path.join(self._stream_dir, "stream.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(self.stream_path)
            self._listener.listen(64)
        except OSError as exc:     # e.g. a TMPDIR too long for a socket path: ZeroMQ only
            print(f"cxlsim pool: no local stream ({exc}); hosts use ZeroMQ", file=self.log)
            self._listener.close()
            self._listener, self.stream_path = None, None
            shutil.rmtree(self._stream_dir, ignore_errors=True)
            return
        self._listener.setblocking(False)

    def _accept_stream(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:     # out of descriptors: refuse this one, keep serving
            print(f"cxlsim pool: local stream not accepted: {exc}", file=self.log)
            return
        if sum(1 for st in self._streams.values() if st.ident is None) >= MAX_UNBOUND_STREAMS:
            sock.close()
            return
        sock.setblocking(True)     # reads pass MSG_DONTWAIT; sends wait with poll (stream.py)
        tune(sock)
        self._streams[sock.fileno()] = _Stream(sock)
        self._poller.register(sock, zmq.POLLIN)

    def _close_stream(self, stream: _Stream) -> None:
        if self._poller is not None:
            self._poller.unregister(stream.sock)
        self._streams.pop(stream.sock.fileno(), None)
        conn = self._conns.get(stream.ident) if stream.ident is not None else None
        if conn is not None and conn.stream is stream:
            conn.stream = None           # replies go back to ZeroMQ
            self._close_mailbox(conn)    # its doorbell was this stream
        for fd in stream.fds:            # descriptors a hello brought and nobody took
            self._fd_closer.close(fd)
        stream.fds.clear()
        stream.sock.close()

    def _read_hello(self, stream: _Stream) -> None:
        """Read (part of) an unbound stream's hello, and the descriptor it may carry; bind the
        stream once the hello is whole. Anything else closes the stream."""
        try:        # never blocks: a poll event can be stale when a descriptor is reused
            data, fds, _, _ = socket.recv_fds(stream.sock, HELLO_BYTES, 2, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        stream.fds += fds
        stream.hello += data
        hello = stream.hello
        count, length = ONE_FRAME_HEAD.unpack_from(hello) if len(hello) >= 8 else (1, 0)
        if not data or len(stream.fds) > 1 or len(hello) > HELLO_BYTES or count != 1 \
                or len(hello) > 8 + length:
            self._close_stream(stream)   # closed, or not a hello of one frame and at most one fd
        elif len(hello) >= 8 and len(hello) == 8 + length:
            self._bind_stream(stream, [memoryview(hello)[8:]])

    def _read_stream(self, stream: _Stream) -> None:
        if stream.ident is None:
            self._read_hello(stream)
            return
        try:
            messages = stream.reader.read()
            while not messages and stream.reader.in_body:   # the rest of a large body is
                messages = stream.reader.read()               # likely here: no poll between
        except BlockingIOError:
            return                       # nothing (more) to read yet
        except EOFError:
            messages = None
        except Exception as exc:         # broken framing, a reset, no memory: this stream only
            print(f"cxlsim pool: local stream closed: {exc!r}", file=self.log)
            messages = None
        if messages is None:             # the host closed it, died, or broke the framing
            self._close_stream(stream)
            return
        for frames in messages:
            if not is_doorbell(frames):      # a doorbell only wakes the loop: mailboxes are next
                self._handle(stream.ident, frames, stream)

    def _bind_stream(self, stream: _Stream, frames) -> None:
        """The first message on a stream is a hello with the token an attached host was given,
        and maybe the descriptor of its shared-memory window."""
        try:
            token = P.decode_stream_hello(frames[0]) if len(frames) == 1 else ""
        except ProtocolError:
            token = ""
        for ident, conn in self._conns.items():
            if token and conn.token and secrets.compare_digest(conn.token.encode(),
                                                                token.encode()):
                refused = None           # why the window was not taken: the stream still is
                if stream.fds and conn.window is None:
                    fd = stream.fds.pop()
                    try:
                        self._adopt_window(conn, fd)
                    except PoolError as exc:
                        self._fd_closer.close(fd)
                        refused = str(exc)
                        print(f"cxlsim pool: host {conn.host}: {exc}", file=self.log)
                if conn.stream is not None:
                    self._close_stream(conn.stream)
                conn.token = ""          # one use: nobody else can take this host's stream
                stream.ident, conn.stream = ident, stream
                for fd in stream.fds:    # (a second window for a host that has one)
                    self._fd_closer.close(fd)
                stream.fds.clear()
                limit = max(self.max_frame_bytes, P.MAX_HEADER_BYTES)
                stream.reader = MessageReader(stream.sock, limit,
                                              max_body_bytes=2 * limit + P.MAX_HEADER_BYTES,
                                              flags=socket.MSG_DONTWAIT)
                if conn.window is not None:  # before the reply: the host may post right after
                    self._open_mailbox(conn)
                self._send(ident, P.encode_reply(None, {"stream": True,
                                                        "window_refused": refused}), (), stream)
                return
        else:
            print("cxlsim pool: local stream without a valid token closed", file=self.log)
        self._close_stream(stream)

    def _adopt_window(self, conn: _Conn, fd: int) -> None:
        window = ShmWindow.adopt(fd, DATA_START)     # (room for the mailbox, then data)
        conn.window, conn.control = window, Mailbox(window, "server")
        print(f"cxlsim pool: host {conn.host} handed in a shared-memory window of "
              f"{window.size} B", file=self.log)

    # ------------------------------------------------------------------ replies
    def _send(self, ident: bytes, header: bytes, frames=(), stream=None) -> None:
        """Reply over `stream` (the local stream the request came over; a _MailReply for the
        mailbox) or else ZeroMQ."""
        if type(stream) is _MailReply:
            conn, box = stream.conn, stream.conn.mailbox
            if box is None:                  # the host's stream went meanwhile: ZeroMQ
                stream = None
            elif not frames and box.fits(header):
                if box.post(stream.seq, header):
                    self._ring(conn)
                return
            else:                            # too large for the mailbox: the stream, then say so
                self._send(ident, header, frames, conn.stream)
                if conn.mailbox is not None and conn.mailbox.post(stream.seq, b""):
                    self._ring(conn)
                return
        if stream is not None and stream.sock.fileno() in self._streams:
            try:
                send_message(stream.sock, [header, *frames], self.heartbeat_timeout_s)
                return
            except (OSError, ValueError) as exc:   # gone, stopped reading, or broken
                print(f"cxlsim pool: local stream closed ({exc}); replying over ZeroMQ",
                      file=self.log)
                self._close_stream(stream)
        try:
            self.sock.send_multipart([ident, header, *frames], copy=False)
        except zmq.ZMQError as exc:   # peer gone: nothing to tell it
            print(f"cxlsim pool: reply to a vanished client dropped ({exc})", file=self.log)

    def _error(self, ident: bytes, req_id, code: str, message: str) -> None:
        self.errors += 1
        self._send(ident, P.encode_error(req_id, code, message), (), self._via)

    # ------------------------------------------------------------------ requests
    def _handle(self, ident: bytes, frames: list, stream: _Stream | None = None) -> None:
        """One request; `frames` are buffers, from ZeroMQ or from `stream`, where replies go."""
        self._via, self._after = stream, None
        # the compact form of the hot commands comes only through a mailbox (protocol.py)
        compact = type(stream) is _MailReply and P.is_compact(frames[0])
        try:
            if compact:
                req_id, cmd, args, data = P.decode_compact_request(frames[0],
                                                                   self.max_frame_bytes)
            else:
                req_id, cmd, args, data = P.decode_request(frames, self.max_frame_bytes)
        except ProtocolError as exc:
            req_id = getattr(exc, "req_id", None)
            # a readable id means the frame was msgpack and the fault is in its fields
            code = getattr(exc, "code", None) or (P.E_FRAME if req_id is None else P.E_ARGS)
            self._error(ident, req_id, code, str(exc))
            return
        conn = self._conns.get(ident)
        if conn is not None:
            conn.last_seen = time.monotonic()
        try:
            if cmd == "sync":
                self._send(ident, P.encode_reply(req_id, self._sync()), (), stream)
                return
            if cmd == "stats" and conn is None:   # read-only: a monitor needs no host
                self._send(ident, P.encode_reply(req_id, self.pool.stats()), (), stream)
                return
            if cmd == "attach":
                self._attach(ident, req_id, args)
                return
            if conn is None:
                self._error(ident, req_id, P.E_ATTACH, f"{cmd}: this connection is not attached "
                            f"to a host (attach first; if it was attached, the server restarted "
                            f"or detached it after a heartbeat timeout)")
                return
            out = self._commands[cmd](ident, conn, req_id, args, data)
            if out is not None:
                result, reply_frames = out
                header = compact and not reply_frames and \
                    P.encode_compact_reply(cmd, req_id, result)
                if header and len(header) > REPLY_BYTES:    # msgpack, which may fit
                    header = None
                self._send(ident, header or P.encode_reply(req_id, result), reply_frames,
                           stream)
            self.served += 1
        except PoolError as exc:
            self._after = None
            self._error(ident, req_id, P.E_REFUSED, str(exc))
        except Exception as exc:    # a bug: say so, keep serving the others
            self._after = None
            print(f"cxlsim pool: internal error on {cmd}: {exc!r}", file=self.log)
            self._error(ident, req_id, P.E_INTERNAL, f"{cmd}: internal server error: {exc!r}")
        if self._after is not None:          # work a handler left for after its reply: the
            after, self._after = self._after, None     # request is answered, so no error reply
            try:
                after()
            except Exception as exc:
                print(f"cxlsim pool: internal error after answering {cmd}: {exc!r}",
                      file=self.log)

    def _sync(self) -> dict:
        return {"quantum": self.pool.quantum, "quantum_ns": self.pool.quantum_ns,
                "capacity_bytes": self.pool.capacity_bytes,
                "extent_bytes": self.pool.extent_bytes, "version": P.VERSION,
                "max_frame_bytes": self.max_frame_bytes,
                "heartbeat_timeout_s": self.heartbeat_timeout_s}

    def _attach(self, ident: bytes, req_id: int, args: dict) -> None:
        host, tag = args["host"], args["tag"]
        if ident in self._conns:
            raise PoolError(f"this connection is already attached as host "
                            f"{self._conns[ident].host}")
        others = sorted((c.host, c.tag) for c in self._conns.values() if c.tag is not None)
        untagged = sorted(c.host for c in self._conns.values() if c.tag is None)
        # a host outside a job would join its barriers and never hand in: none may mix
        if others and tag is None:
            raise PoolError(f"host {host}: attaches without a tag while the hosts of a job are "
                            f"attached ({', '.join(f'host {h}: {t}' for h, t in others)}); it "
                            f"would hold up their barriers")
        if untagged and tag is not None:
            raise PoolError(f"host {host}: hosts without a tag are attached ({untagged}); they "
                            f"would hold up this job's barriers (detach them, or use a fresh "
                            f"server)")
        if others and any(t != tag for _, t in others):
            raise PoolError(f"host {host}: its job's tag {tag} differs from the tag of the hosts "
                            f"attached ({', '.join(f'host {h}: {t}' for h, t in others)}): for a "
                            f"replay, every host process must be given the same trace and "
                            f"settings, apart from --host-id and --out")
        self.pool.attach(host, args["quota"])   # refuses a host id already attached
        conn = self._conns[ident] = _Conn(host, time.monotonic(), None, secrets.token_hex(16),
                                          ident=ident, tag=tag)
        self._by_host[host] = ident
        print(f"cxlsim pool: host {host} attached (quota {args['quota']} B)", file=self.log)
        self._send(ident, P.encode_reply(req_id, {**self._sync(), "stream": self.stream_path,
                                                  "stream_token": conn.token}), (), self._via)

    def _drop_host(self, ident: bytes, reason: str) -> None:
        conn = self._conns[ident]
        if conn.stream is not None:
            self._close_stream(conn.stream)
        del self._conns[ident]
        self._by_host.pop(conn.host, None)
        self._waiting.pop(conn.host, None)
        self._released.pop(conn.host, None)
        self._ahead.pop(conn.host, None)
        self.pool.detach(conn.host)
        self._close_window(conn)
        s = self.pool.stats()
        print(f"cxlsim pool: host {conn.host} {reason}; pool used {s['used_bytes']} B + free "
              f"{s['free_bytes']} B = {s['capacity_bytes']} B", file=self.log)
        self._complete_barrier()

    def _reap(self) -> None:
        now = time.monotonic()
        for stream in [st for st in self._streams.values()
                       if st.ident is None and now - st.opened > HELLO_WAIT_S]:
            self._close_stream(stream)           # connected and never said who it is
        for ident, conn in list(self._conns.items()):
            if now - conn.last_seen > self.heartbeat_timeout_s:
                self._drop_host(ident, f"missed heartbeats for {self.heartbeat_timeout_s} s: "
                                       f"detached, its private blocks and pins freed")

    def _complete_barrier(self) -> None:
        self._release(self.pool.try_complete())
        self.pool.settle()

    def _release(self, releases: dict) -> None:
        """Answer the exchange of each host the pool releases (the others stay parked); then
        take the hand-ins those hosts sent ahead (which may release more hosts)."""
        for host, delta in sorted(releases.items()):
            req_id, handed_in, stream = self._waiting.pop(host)
            result = _delta_to_wire(delta)
            self._released[host] = (handed_in, result)
            ident = self._by_host.get(host)
            if ident is not None:
                self._conns[ident].released = time.monotonic()
                self._send(ident, P.encode_reply(req_id, result), (), stream)
        for host in sorted(releases):
            if host in self._ahead and self._ahead[host][1] == self._released[host][0]:
                self._take_ahead(host)

    def _take_ahead(self, host: int) -> None:
        """The hand-in `host` sent ahead, now that its release is out: its hand-in of the next
        barrier if that release ran it until exactly the end it ran ahead to (the host decided
        so from the same release: protocol.md, Handing in ahead); else answered null and the
        host hands in as usual."""
        req_id, _, ops, next_ns, after_ns, route = self._ahead.pop(host)
        ident = self._by_host[host]
        _, release = self._released[host]
        if release["run_until_ns"] != after_ns:
            self._send(ident, P.encode_reply(req_id, None), (), route)
            return
        quantum = release["quantum"] + 1
        try:
            releases = self.pool.exchange(host, quantum, ops, next_ns)
        except PoolError as exc:          # (refused before it changed anything)
            self._send(ident, P.encode_error(req_id, P.E_REFUSED, str(exc)), (), route)
            return
        self._waiting[host] = (req_id, quantum, route)
        self._release(releases)

    # ------------------------------------------------------------------ commands
    # Each returns (result, data frames) to reply now, or None when the reply comes later.
    def _cmd_heartbeat(self, ident, conn, req_id, args, data):
        return {"quantum": self.pool.quantum, "waiting": self.pool.waiting}, ()

    def _cmd_detach(self, ident, conn, req_id, args, data):
        self._send(ident, P.encode_reply(req_id, None), (), self._via)   # before its stream goes
        self._drop_host(ident, "detached")
        return None

    def _cmd_resize(self, ident, conn, req_id, args, data):
        self.pool.resize(conn.host, args["quota"])
        return None, ()

    def _cmd_stats(self, ident, conn, req_id, args, data):
        return self.pool.stats(), ()

    def _cmd_alloc(self, ident, conn, req_id, args, data):
        out = []
        for key, size in zip(args["keys"], args["sizes"]):
            try:
                self.pool.alloc(conn.host, key, size, args["shared"])
                out.append(None)
            except PoolError as exc:
                out.append(str(exc))
        return out, ()

    def _cmd_put(self, ident, conn, req_id, args, data):
        if args["shm"] is not None:
            win = conn.window
            if win is None:
                raise PoolError("put: this host handed the server no shared-memory window")
            for off, n in args["shm"]:
                if off < DATA_START or off + n > win.size:
                    raise PoolError(f"put: [{off}, {off + n}) is outside the window's data area "
                                    f"[{DATA_START}, {win.size})")
            if type(self._via) is _MailReply:
                # answer first, copy after: the host writes its next blocks meanwhile, and the
                # copy is done before any other request is looked at (mailbox.py)
                keys, places = args["keys"], args["shm"]
                out = self.pool.put_later(conn.host, zip(keys, (n for _, n in places)),
                                          args["shared"])
                seq = self._via.seq
                self._after = lambda: self._copy_out(conn, seq, keys, places, out)
                return out, ()
            # copy out of the window now: the host reuses it for its next request
            blobs = [win.buf[off:off + n].tobytes() for off, n in args["shm"]]
        else:
            blobs = [bytes(f) for f in data]   # data frames arrive as memoryviews
        return self.pool.put_many(conn.host, zip(args["keys"], blobs), args["shared"]), ()

    def _copy_out(self, conn: _Conn, seq: int, keys, places, accepted) -> None:
        """The blocks of a put answered through the mailbox, into the pool; then tell the host
        (through the window's words, which outlive a dropped stream). A block that cannot be
        copied (no memory) leaves the pool: it must not read as zeros."""
        buf = conn.window.buf
        try:
            for key, (off, n), refused in zip(keys, places, accepted):
                if refused is None:
                    try:
                        self.pool.fill(key, buf[off:off + n].tobytes())
                    except MemoryError:
                        self.pool.discard(key)
                        print(f"cxlsim pool: block {key} of host {conn.host} dropped: no memory "
                              f"to copy it out of the window", file=self.log)
        finally:
            conn.control.copied(seq)

    def _cmd_get(self, ident, conn, req_id, args, data):
        blobs = self.pool.get_many(conn.host, args["keys"])
        if not args["shm"]:
            return None, blobs
        win = conn.window
        if win is None:
            raise PoolError("get: this host handed the server no shared-memory window")
        places, frames, off = [], [], DATA_START
        for blob in blobs:       # what fits goes through the window, the rest as frames
            if off + len(blob) <= win.size:
                win.buf[off:off + len(blob)] = blob
                places.append([off, len(blob)])
                off += len(blob)
            else:
                places.append([-1, len(blob)])
                frames.append(blob)
        return places, frames

    def _cmd_free(self, ident, conn, req_id, args, data):
        return self.pool.free_many(conn.host, args["keys"]), ()

    def _cmd_share(self, ident, conn, req_id, args, data):
        out = []
        for key in args["keys"]:
            try:
                self.pool.share(conn.host, key)
                out.append(None)
            except PoolError as exc:
                out.append(str(exc))
        return out, ()

    def _cmd_lookup(self, ident, conn, req_id, args, data):
        return self.pool.lookup(conn.host, args["keys"]), ()

    def _cmd_pin(self, ident, conn, req_id, args, data):
        self.pool.pin(conn.host, args["keys"])
        return None, ()

    def _cmd_unpin(self, ident, conn, req_id, args, data):
        self.pool.unpin(conn.host, args["keys"])
        return None, ()

    def _cmd_exchange(self, ident, conn, req_id, args, data):
        host, quantum = conn.host, args["quantum"]
        if host in self._waiting and quantum == self._waiting[host][1]:
            self._waiting[host] = (req_id, quantum, self._via)   # a retry after a timeout
            return None
        last = self._released.get(host)
        if last is not None and last[0] == quantum and host not in self._waiting:
            return last[1], ()        # a retry whose release was lost on the way: send it again
        # the hosts this hand-in releases learn their schedule first, so they can run their
        # quanta while the ops are applied, and read the pool's changes when they arrive
        for parked, release in self.pool.due(host, quantum, args.get("next_ns")).items():
            if parked != host and parked in self._waiting:
                _, its_quantum, route = self._waiting[parked]
                if type(route) is _MailReply:   # notices go beside the mailbox, on the stream
                    route = route.conn.stream
                self._send(self._by_host[parked], P.encode_soon_notice(its_quantum, release), (),
                           route)
        ops = _ops_from_wire(host, args["ops"])
        releases = self.pool.exchange(host, quantum, ops, args.get("next_ns"))
        self._waiting[host] = (req_id, quantum, self._via)
        self._release(releases)
        self.pool.settle()            # after the releases: folds while the released hosts run
        return None

    def _cmd_exchange_ahead(self, ident, conn, req_id, args, data):
        host, follows = conn.host, args["follows"]
        if type(self._via) is _MailReply:  # its reply would take the waiting hand-in's slot
            raise PoolError("exchange_ahead goes over the stream or ZeroMQ, not the mailbox")
        if host in self._ahead:
            raise PoolError(f"host {host} handed in ahead twice before a release")
        waiting = self._waiting.get(host)
        last = self._released.get(host)
        released = waiting is None and last is not None and last[0] == follows
        # the hand-in it follows: waiting, released, or still on its way (through the mailbox:
        # then it is for the barrier in progress, which cannot complete without it)
        if not (released or waiting is None and follows == self.pool.quantum
                or waiting is not None and waiting[1] == follows):
            raise PoolError(f"host {host} handed in ahead of barrier {follows}, which is "
                            f"neither its last hand-in nor the barrier in progress")
        ops = _ops_from_wire(host, args["ops"])
        self._ahead[host] = (req_id, follows, ops, args["next_ns"], args["after_ns"], self._via)
        # it waits for the release of the hand-in it follows, unless that went out already
        # (the hand-in itself may still be on its way, through the mailbox: it comes later)
        if released:
            self._take_ahead(host)
            self.pool.settle()
        return None


def _ops_from_wire(host: int, columns) -> list[PoolOp]:
    """A hand-in's ops from its checked columns (protocol.OPS), as `host`'s."""
    t_ns, seq, kind, key, nbytes, shared = columns
    return list(map(PoolOp, t_ns, [host] * len(t_ns), seq, kind, key, nbytes, shared))


def _delta_to_wire(delta) -> dict:
    return {"quantum": delta.quantum, "added": list(delta.added), "removed": list(delta.removed),
            "rejected": [list(r) for r in delta.rejected], "used_bytes": delta.used_bytes,
            "capacity_bytes": delta.capacity_bytes,
            "coherence_ns": [list(c) for c in delta.coherence_ns],
            "next_ns": delta.next_ns if math.isfinite(delta.next_ns) else None,
            "run_until_ns": delta.run_until_ns if math.isfinite(delta.run_until_ns) else None,
            "horizon_ns": delta.horizon_ns if math.isfinite(delta.horizon_ns) else None,
            "horizon_host": delta.horizon_host,
            "traffic": [list(col) for col in zip(*delta.traffic)] or [[], [], [], [], []]}


def run_server(pool: LocalPool, bind: str, ready=print, **kw) -> int:
    """Serve until SIGINT/SIGTERM. `ready` gets the line announcing the bound endpoint."""
    server = PoolServer(pool, bind, **kw)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    try:
        ready(f"cxlsim pool: serving on {server.endpoint}")
        server.serve()
    finally:
        server.close()
    return 0
