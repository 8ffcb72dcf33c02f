"""SIGKILL of one of four host processes mid-replay: the others finish, the dead host's private
blocks and pins are freed, shared blocks others reference stay, and no capacity is lost."""
import json
import signal
import subprocess
import sys

from cxlsim.pool.client import PoolClient
from pool_support import pool_server, wait_for

QUANTA = 25
KILLED, KILL_AT = 2, 5
SHARED = 1_000_000

# One host process: each quantum it puts a private block over the data path (real bytes, pinned),
# and through the barrier a shared block of its own plus a touch of the previous quantum's shared
# block of host+1.
WORKER = r"""
import json, sys, time
from cxlsim.pool.api import PoolOp
from cxlsim.pool.client import PoolClient
ep, host, quanta = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = PoolClient(ep, host, timeout_s=20.0, heartbeat_s=0.2)
c.attach(host, 1 << 20)
end = time.monotonic() + 20
while len(c.stats()["hosts"]) < 4:
    assert time.monotonic() < end, "the other hosts never attached"
    time.sleep(0.02)
q0 = c.stats()["quantum"]
for k in range(quanta):
    c.put(host, host * 10000 + k, bytes([host]) * 4096)
    c.pin(host, [host * 10000 + k])
    ops = [PoolOp(float(k * 1000 + host), host, 0, "put", %(shared)d + host * 10000 + k, 4096, True)]
    if k:
        ops.append(PoolOp(float(k * 1000 + 500), host, 1, "touch",
                          %(shared)d + ((host + 1) %% 4) * 10000 + k - 1, 0, True))
    c.exchange(host, q0 + k, ops)
    print("q", k, flush=True)
    if host == %(killed)d and k == %(kill_at)d:
        sys.stdin.readline()     # killed here: quantum k + 1 cannot complete before it dies
print("done", json.dumps(c.stats()), flush=True)
sys.stdin.readline()
c.detach(host)
c.close()
""" % {"shared": SHARED, "killed": KILLED, "kill_at": KILL_AT}


def read_until(proc, prefix):
    while True:
        line = proc.stdout.readline()
        assert line, f"host process ended early (rc {proc.poll()})"
        if line.startswith(prefix):
            return line


def test_sigkill_of_one_host_loses_no_capacity():
    procs = []
    with pool_server(heartbeat_s=1.5) as (ep, server, log):
        try:
            for h in range(4):
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", WORKER, ep, str(h), str(QUANTA)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True))
            read_until(procs[KILLED], f"q {KILL_AT}")
            procs[KILLED].send_signal(signal.SIGKILL)
            procs[KILLED].wait(10)
            finals = {h: json.loads(read_until(procs[h], "done").split(" ", 1)[1])
                      for h in range(4) if h != KILLED}
            for stats in finals.values():
                assert str(KILLED) not in stats["hosts"]
            with PoolClient(ep, 9, timeout_s=5.0) as obs:
                obs.attach(9, 0)
                s = obs.stats()
                assert s["used_bytes"] + s["free_bytes"] == s["capacity_bytes"]
                assert s["index_used_bytes"] == s["used_bytes"]
                assert s["used_bytes"] == s["shared_bytes"] + sum(
                    hs["private_bytes"] for hs in s["hosts"].values())
                for h in (0, 1, 3):    # survivors: every private block and pin still there
                    assert s["hosts"][str(h)]["private_bytes"] == QUANTA * 4096
                    assert s["hosts"][str(h)]["pins"] == QUANTA
                assert s["pinned_shared_bytes"] == 0
                # host 1 read the killed host's shared blocks of quanta 0..KILL_AT-1: they stay;
                # the last one only the killed host referenced: freed with it
                base = SHARED + KILLED * 10000
                assert obs.lookup(9, [base + k for k in range(KILL_AT)]) == KILL_AT
                assert obs.lookup(9, [base + KILL_AT]) == 0
                for p in procs:
                    if p.poll() is None:
                        p.stdin.write("bye\n")
                        p.stdin.flush()
                for h in (0, 1, 3):
                    assert procs[h].wait(20) == 0, procs[h].stderr.read()
                s = wait_for(lambda: (lambda s: s if len(s["hosts"]) == 1 else None)(
                    obs.stats()), 10, "the survivors to detach")
                # everyone left: all capacity is back, exactly
                assert s["used_bytes"] == 0 and s["free_bytes"] == s["capacity_bytes"]
                assert s["blocks"] == 0 and s["index_used_bytes"] == 0
                obs.detach(9)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(10)
                for f in (p.stdin, p.stdout, p.stderr):
                    f.close()
