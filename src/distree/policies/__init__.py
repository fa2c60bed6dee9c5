"""Exit policies: when the coordinator stops a request, and their calibration to a QoS target."""

from distree.policies.base import ExitPolicy, ExitThresholds, decide_exits, exit_scores
from distree.policies.deadline import should_stop_for_deadline
from distree.policies.registry import DEFAULT_POLICY, POLICIES, make_policy

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "ExitPolicy",
    "ExitThresholds",
    "decide_exits",
    "exit_scores",
    "make_policy",
    "should_stop_for_deadline",
]
