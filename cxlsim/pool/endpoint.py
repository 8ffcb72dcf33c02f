"""ZeroMQ endpoints as the pool takes them: their form, and whether they stay on this machine."""
from __future__ import annotations

import ipaddress

from ..errors import PoolError

FORMS = "tcp://HOST:PORT (PORT may be * to bind any free one) or ipc://PATH"


def check_endpoint(endpoint: str, binding: bool) -> None:
    """Refuse what ZeroMQ would reject with a bare errno, or accept and silently change (a TCP
    port past 65535 wraps around)."""
    if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://",
                                                                  "inproc://")):
        raise PoolError(f"{endpoint!r} is not a pool endpoint: give {FORMS}")
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://"):].rpartition(":")
        if not sep or not host:
            raise PoolError(f"{endpoint!r}: a tcp endpoint needs a host and a port ({FORMS})")
        if not ((binding and port == "*") or (port.isdigit() and 1 <= int(port) <= 65535)):
            raise PoolError(f"{endpoint!r}: port must be 1..65535"
                            f"{' or *' if binding else ''}, got {port!r}")
    elif endpoint.endswith("://"):
        raise PoolError(f"{endpoint!r}: no path after the transport ({FORMS})")


def is_loopback_endpoint(endpoint: str) -> bool:
    """ipc:// and inproc:// stay on this machine; tcp:// must name a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:          # '*', interface names, host names: not provably loopback
        return False
