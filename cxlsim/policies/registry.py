"""Policy registry: one decorator registers a class by name; names resolve to classes.

Third-party policies need no registration: `policy_class("mypkg.mymod:MyPolicy")` (and so
`--policy mypkg.mymod:MyPolicy`) imports the class, and packages may expose policies by name
through the `cxlsim.policies` entry-point group. A name given with @register is known once its
module is imported: the built-ins are imported by `cxlsim/policies/__init__.py`.
"""
from __future__ import annotations

import importlib

from ..errors import ConfigError
from .base import Policy

_REGISTRY: dict[str, type[Policy]] = {}
ENTRY_POINT_GROUP = "cxlsim.policies"


def register(name: str):
    """Class decorator: `@register("my-policy")`. A name can be registered once."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"@register({name!r}) must decorate a Policy subclass, got {cls!r}")
        if name in _REGISTRY:
            raise ConfigError(f"policy name {name!r} is already registered by "
                              f"{_REGISTRY[name].__module__}.{_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def entry_points(group: str):
    # imported here: importlib.metadata costs ~30 ms at start-up, and built-in names never need it
    from importlib.metadata import entry_points as find
    return find(group=group)


def known_policies() -> list[str]:
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def policy_class(spec: str) -> type[Policy]:
    """Resolve a registered name, an entry-point name or 'module:Class'."""
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"policy {spec!r}: cannot load {attr!r} from {module_name!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise ConfigError(f"policy {spec!r} is not a cxlsim Policy subclass")
        return cls
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Policy)):
                raise ConfigError(f"entry point {spec!r} does not name a Policy subclass")
            return cls
    raise ConfigError(f"unknown policy {spec!r}; known: {', '.join(known_policies())} "
                      f"(or give module:Class)")


def make_policy(spec: str | Policy, **params) -> Policy:
    """A fresh policy instance from a name/spec (params go to the constructor)."""
    if isinstance(spec, Policy):
        return spec
    cls = policy_class(spec)
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"policy {spec!r}: bad parameters {params}: {exc}") from None
