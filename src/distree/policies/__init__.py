"""Exit policies: when the coordinator stops a request, and their calibration to a QoS target."""

from distree import config
from distree.policies.base import ExitPolicy, ExitThresholds, decide_exits, exit_scores
from distree.policies.deadline import should_stop_for_deadline
from distree.policies.registry import (
    load_plugins,
    make_policy,
    policy_class,
    policy_names,
    register_policy,
)

# The built-in policies register themselves on import, before any user module.
from distree.policies import scores  # noqa: F401  isort: skip

DEFAULT_POLICY = config.DEFAULT_POLICY  # (defined where the command line reads it)

__all__ = [
    "DEFAULT_POLICY",
    "ExitPolicy",
    "ExitThresholds",
    "decide_exits",
    "exit_scores",
    "load_plugins",
    "make_policy",
    "policy_class",
    "policy_names",
    "register_policy",
    "should_stop_for_deadline",
]
