"""Helpers for the pool tests: a real `cxlsim pool serve` process on loopback, always stopped."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

START_TIMEOUT_S = 20.0


def _read_line(proc, timeout_s: float) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            return proc.stdout.readline()
        if proc.poll() is not None:
            break
    return ""


@contextmanager
def pool_server(*extra, bind="tcp://127.0.0.1:*", capacity_bytes=64 << 20, extent_mib=1,
                heartbeat_s=5.0):
    """Start a server; yield (endpoint, process, log path). Killed on exit whatever happens."""
    log = tempfile.NamedTemporaryFile("w+", prefix="cxlsim-pool-log-", delete=False)
    cmd = [sys.executable, "-m", "cxlsim", "pool", "serve", "--bind", bind,
           "--capacity-bytes", str(capacity_bytes), "--extent-mib", str(extent_mib),
           "--heartbeat-timeout-s", str(heartbeat_s), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        line = _read_line(proc, START_TIMEOUT_S)
        if "serving on" not in line:
            log.seek(0)
            raise RuntimeError(f"pool server did not start: {line!r} {log.read()}")
        yield line.split()[-1], proc, log.name
    finally:
        stop(proc)
        log.close()
        os.unlink(log.name)


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout:
        proc.stdout.close()


def wait_for(pred, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def detach_and_close(clients) -> None:
    """Test teardown: detach each client if it still can, then close it."""
    from cxlsim.errors import PoolError
    for c in clients:
        try:
            c.detach(c.host_id)
        except PoolError:
            pass
        c.close()


def fuzz_changes_nothing(c, other, fuzz, at_least: int = 1000) -> None:
    """Run `fuzz(c, sent)` (bad requests from host c, counted in sent[0]) beside a private block
    of c's and a shared block of other's: at least `at_least` were sent, and afterwards the pool
    is as it was and both blocks still read back."""
    c.put(c.host_id, 1, b"private" * 10)
    other.put(other.host_id, 2, b"shared" * 10, shared=True)
    before = other.stats()
    sent = [0]
    fuzz(c, sent)
    assert sent[0] >= at_least
    assert other.stats() == before
    assert c.get(c.host_id, 1) == b"private" * 10 and c.lookup(c.host_id, [2]) == 1


def raw_mail(c, seq, payload) -> dict:
    """Post `payload` as request `seq` through client c's mailbox; the msgpack reply."""
    import msgpack
    if c._mailbox.post(seq, payload):     # the server sleeps: ring it, as a client does
        c._ring("raw")
    assert c._mailbox.wait(seq, 5.0), f"no mailbox reply to {payload[:200]!r}"
    raw = c._mailbox.read()
    assert raw[:1] != b"\xc1", "a compact reply: errors are always said in msgpack"
    return msgpack.unpackb(raw, raw=False)
