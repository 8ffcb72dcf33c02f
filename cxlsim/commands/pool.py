"""`cxlsim pool`: serve a shared CXL pool to host processes (serve), make CURVE keys (keygen)."""
from __future__ import annotations

import os
import sys
import tempfile

from ..errors import ConfigError


def add_parser(sub):
    p = sub.add_parser("pool", help="serve a CXL memory pool shared by host processes (ZeroMQ)",
                       description="A pool server owns the pool's capacity, block index and "
                       "coherence directory; hosts use cxlsim.pool.PoolClient. docs/multihost.md")
    psub = p.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    s = psub.add_parser("serve", help="run a pool server until SIGINT/SIGTERM")
    s.add_argument("--bind", default="tcp://127.0.0.1:5701",
                   help="ZeroMQ endpoint (tcp://ADDR:PORT, PORT may be *, or ipc://PATH); "
                   "non-loopback addresses need --curve-secret-key or --insecure")
    cap = s.add_mutually_exclusive_group()
    cap.add_argument("--capacity-gib", type=float, default=None, help="pool capacity (default 4)")
    cap.add_argument("--capacity-bytes", type=int, default=None, help="pool capacity in bytes")
    s.add_argument("--extent-mib", type=float, default=256.0,
                   help="dynamic-capacity extent size: quotas are whole extents (default 256)")
    s.add_argument("--quantum-ns", type=float, default=1_000_000.0,
                   help="virtual-time quantum of the replay barrier (default 1e6)")
    s.add_argument("--topology", help="topology preset or TOML for coherence costs")
    s.add_argument("--memory", help="the pool's memory (or interleave) in the topology")
    s.add_argument("--heartbeat-timeout-s", type=float, default=10.0,
                   help="detach a host silent this long (default 10)")
    s.add_argument("--curve-secret-key", help="file with the server's CURVE secret key (z85), "
                   "from `cxlsim pool keygen`")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind without CURVE (anyone who reaches it is served)")
    s.add_argument("--max-frame-bytes", type=int, default=64 << 20,
                   help="largest frame accepted (default 64 MiB)")
    s.add_argument("--spin-us", type=float, default=None,
                   help="after handling requests, poll this long for the next one before "
                   "sleeping, while a core is free (default 1000; 0: always sleep; at most "
                   "50000)")
    k = psub.add_parser("keygen", help="write a CURVE key pair: DIR/pool.secret and DIR/pool.public")
    k.add_argument("dir", help="directory for the key files (created)")
    k.add_argument("--force", action="store_true",
                   help="replace a key pair already there (hosts holding its public key are "
                   "then refused)")
    return p


def read_key(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror})") from None
    if len(key) != 40:
        raise ConfigError(f"{path}: a CURVE key is 40 z85 characters, got {len(key)}")
    import struct

    from zmq.utils import z85
    try:
        z85.decode(key)
    except (KeyError, ValueError, struct.error):     # a character, or a value, out of range
        raise ConfigError(f"{path}: not a CURVE key (not z85, or a value out of range)") from None
    return key


def read_secret_key(path: str) -> bytes:
    """read_key for the server's secret key. `keygen` writes pool.public beside it: if that file
    is there, the secret must be its pair (a public key given by mistake would make a server no
    host can reach, with nothing said)."""
    import zmq
    secret = read_key(path)
    public_path = os.path.join(os.path.dirname(path), "pool.public")
    public = read_key(public_path) if os.path.exists(public_path) else None
    if public is not None and zmq.curve_public(secret) != public:
        what = f"holds the public key of {public_path}" if secret == public \
            else f"is not the secret key of {public_path}"
        raise ConfigError(f"{path} {what}: give the server the pool.secret that "
                          f"`cxlsim pool keygen` wrote beside it")
    return secret


def _keygen(directory: str, force: bool = False) -> int:
    import zmq
    secret_path = os.path.join(directory, "pool.secret")
    public_path = os.path.join(directory, "pool.public")
    existing = [p for p in (secret_path, public_path) if os.path.lexists(p)]
    if existing and not force:
        raise ConfigError(f"{existing[0]} already exists: a new key pair would lock out the hosts "
                          f"that hold its public key (pass --force to replace it)")
    public, secret = zmq.curve_keypair()
    written = []                     # temporary files, renamed over the pair once both are whole
    try:
        os.makedirs(directory, exist_ok=True)
        for key, mode in ((secret, 0o600), (public, 0o644)):
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".keygen-")   # (mode 0600)
            written.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(key + b"\n")
            os.chmod(tmp, mode)
        # a failure before here leaves the old pair; --force keeps no old file's mode or link
        os.replace(written[0], secret_path)
        os.replace(written[1], public_path)
    except OSError as exc:
        where = exc.filename2 or exc.filename or directory      # (a rename names its target)
        raise ConfigError(f"{where}: cannot write the key pair ({exc.strerror})") from None
    finally:
        for tmp in written:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    print(f"wrote {secret_path} (keep it on the server) and "
          f"{os.path.join(directory, 'pool.public')} (give it to hosts)")
    return 0


def _serve(args) -> int:
    from ..pool.local import LocalPool
    from ..pool.server import run_server
    from ..pool.stream import spin_budget_s
    if args.capacity_bytes is not None:
        capacity = args.capacity_bytes
    else:
        gib = args.capacity_gib if args.capacity_gib is not None else 4.0
        if not 0 < gib < 1 << 34:                # (False for NaN and inf too)
            raise ConfigError(f"--capacity-gib must be a positive number, got {gib}")
        capacity = int(gib * (1 << 30))
    fabric = None
    if args.topology or args.memory:
        if not (args.topology and args.memory):
            raise ConfigError("--topology and --memory go together (coherence costs need both)")
        from ..fabric import Fabric
        from ..topology import load_topology
        fabric = Fabric(load_topology(args.topology))
    if args.max_frame_bytes < 1024:
        raise ConfigError(f"--max-frame-bytes must be >= 1024, got {args.max_frame_bytes}")
    secret = read_secret_key(args.curve_secret_key) if args.curve_secret_key else None
    pool = LocalPool(capacity, quantum_ns=args.quantum_ns, fabric=fabric, memory=args.memory,
                     extent_bytes=int(args.extent_mib * (1 << 20)))

    def ready(line):
        print(line, flush=True)
    spin = {} if args.spin_us is None else {"spin_us": args.spin_us}
    if args.spin_us is not None:
        spin_budget_s(args.spin_us, "--spin-us")          # the flag's name in the error
    return run_server(pool, args.bind, ready=ready, heartbeat_timeout_s=args.heartbeat_timeout_s,
                      curve_secret_key=secret, insecure=args.insecure,
                      max_frame_bytes=args.max_frame_bytes, log=sys.stderr, **spin)


def run(args) -> int:
    if args.pool_command == "keygen":
        return _keygen(args.dir, args.force)
    return _serve(args)
