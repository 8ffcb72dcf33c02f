"""Placement policies: the contract (base.Policy), the registry and the built-ins.

Importing this package registers every built-in policy module listed below.
"""
from .base import Policy
from .registry import known_policies, make_policy, policy_class, register
from . import lru, fifo, lfu, s3fifo, sieve  # noqa: F401  (registration)
from . import (hbm_only, write_through, demote_on_evict, tpp,  # noqa: F401  (serving baselines)
               mooncake_length_aware, tail_first)

__all__ = ["Policy", "register", "make_policy", "policy_class", "known_policies"]
