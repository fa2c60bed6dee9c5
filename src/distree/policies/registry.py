"""Policies by name: a registering decorator, and the modules users add policies from.

A policy is usable everywhere (``eval``, ``calibrate``, ``serve``, ``simulate``, scenario
files) once its class is registered::

    from distree.policies import ExitPolicy, register_policy

    @register_policy
    class Margin(ExitPolicy):
        name = "margin"

        def score(self, e, seen):
            top2 = seen.logits[e].float().softmax(-1).topk(2).values
            return top2[:, 0] - top2[:, 1]

A module of the user's own is loaded with ``distree --plugin MODULE ...`` (or the
``DISTREE_PLUGINS`` environment variable, comma-separated, which processes that distree
starts inherit), or from an installed package's ``distree.policies`` entry point.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import TypeVar

from distree.config import PLUGINS_ENV_VAR
from distree.exits import Array
from distree.policies.base import ExitPolicy

PLUGINS_ENV = PLUGINS_ENV_VAR
ENTRY_POINT_GROUP = "distree.policies"

_REGISTRY: dict[str, type[ExitPolicy]] = {}
_loaded: set[str] = set()
_plugins_env_seen: str | None = None  # $DISTREE_PLUGINS as the last lookup found it

P = TypeVar("P", bound=type[ExitPolicy])


def register_policy(cls: P) -> P:
    """Class decorator: make ``cls`` selectable by its ``name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name != name.strip() or "," in name:
        raise ValueError(f"{cls.__qualname__}: a policy needs a non-empty name without spaces or commas")
    if not (isinstance(cls, type) and issubclass(cls, ExitPolicy)):
        raise TypeError(f"{cls!r} is not an ExitPolicy subclass")
    known = _REGISTRY.get(name)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"policy name {name!r} is taken by {known.__module__}.{known.__qualname__}")
    if "criterion" not in cls.__dict__:  # an inherited one would describe the parent
        cls.criterion = (cls.__doc__ or "").strip().split("\n")[0].rstrip(".")
    _REGISTRY[name] = cls
    return cls


def _with_plugins() -> None:
    """Before a lookup: import the plugins ``$DISTREE_PLUGINS`` names and the installed entry
    points, once (again if the variable changed). The command line only sets the variable
    from ``--plugin``, so a command that never looks a policy up never imports them."""
    global _plugins_env_seen  # noqa: PLW0603 - the module's memory of the environment it last loaded
    env = os.environ.get(PLUGINS_ENV, "")
    if env != _plugins_env_seen:
        _plugins_env_seen = env  # first: a plugin that looks policies up must not recurse
        load_plugins()


def policy_names(*, servable: bool | None = None, calibrated: bool | None = None) -> list[str]:
    """Registered names in registration order (built-ins first), optionally only those
    that can be served or that calibration fits."""
    _with_plugins()
    out = []
    for name, cls in _REGISTRY.items():
        bare = cls.__new__(cls)  # the properties read class attributes only
        if servable is not None and bare.servable != servable:
            continue
        if calibrated is not None and bare.calibrated != calibrated:
            continue
        out.append(name)
    return out


def policy_class(name: str) -> type[ExitPolicy]:
    """The registered class called ``name``."""
    _with_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_policy(name: str, labels: Array | None = None) -> ExitPolicy:
    """The policy called ``name``; ``labels`` go only to a policy that reads them."""
    cls = policy_class(name)
    return cls(labels) if cls.needs_labels else cls()


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import the policy modules named in ``modules``, in ``$DISTREE_PLUGINS`` and in the
    installed ``distree.policies`` entry points; returns the modules imported now.

    ``modules`` are added to ``$DISTREE_PLUGINS``, so processes distree starts (workers,
    coordinators of ``distree demo``) load them too."""
    names = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    names += [m for m in modules if m not in names]
    if names:
        os.environ[PLUGINS_ENV] = ",".join(names)
    imported = []
    for m in names:
        if m in _loaded:
            continue
        try:
            importlib.import_module(m)
        except ImportError as err:
            raise ValueError(f"policy plugin {m!r} could not be imported: {err}") from err
        _loaded.add(m)
        imported.append(m)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value not in _loaded:
            ep.load()
            _loaded.add(ep.value)
            imported.append(ep.value)
    return imported
