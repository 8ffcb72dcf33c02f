"""The local stream's framing helpers (cxlsim/pool/stream.py) on their own: sends wait for a
full socket buffer on any descriptor number, within their deadline, and polling budgets are
bounded."""
import os
import resource
import socket
import subprocess
import sys

import pytest

from cxlsim.errors import PoolError
from cxlsim.pool.client import PoolClient
from cxlsim.pool.stream import MAX_SPIN_US, MessageReader, send_message


def _high_descriptor(sock: socket.socket, number: int = 1500) -> socket.socket:
    """The same socket under a descriptor number select() cannot take (>= 1024)."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= number:
        pytest.skip(f"the open-file limit is below {number + 1}")
    os.dup2(sock.fileno(), number)
    sock.close()
    return socket.socket(fileno=number)


def test_a_send_into_a_full_buffer_times_out_on_a_high_descriptor():
    a, b = socket.socketpair()
    a = _high_descriptor(a)
    try:
        with pytest.raises(socket.timeout, match="read too little"):
            send_message(a, [b"x" * (64 << 20)], 0.2)      # nobody reads: the buffer fills
    finally:
        a.close()
        b.close()


def test_a_large_message_crosses_a_high_descriptor_whole():
    a, b = socket.socketpair()
    a = _high_descriptor(a)
    body = bytes(range(256)) * (24 << 12)                   # 24 MiB: many buffer-fulls
    if os.fork() == 0:                                      # the writer
        try:
            b.close()
            send_message(a, [b"head", body], 30.0)
        finally:
            os._exit(0)
    a.close()                   # the writer's end is its own: if it fails, we read end of stream
    b.settimeout(60)
    try:
        reader, got = MessageReader(b, len(body)), []
        while not got:
            got = reader.read()
        assert bytes(got[0][0]) == b"head" and bytes(got[0][1]) == body
    finally:
        os.wait()
        b.close()


@pytest.mark.parametrize("spin_us", [-1.0, float("inf"), float("nan"), MAX_SPIN_US + 1.0])
def test_polling_budgets_are_bounded(spin_us):
    with pytest.raises(PoolError, match=f"spin_us must be 0..{MAX_SPIN_US} us"):
        PoolClient("tcp://127.0.0.1:1", 0, spin_us=spin_us)
    out = subprocess.run([sys.executable, "-m", "cxlsim", "pool", "serve", "--spin-us",
                          str(spin_us)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"--spin-us must be 0..{MAX_SPIN_US}" in out.stderr
