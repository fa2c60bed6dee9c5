"""The one cost rule: the MACs a request pays, stage by stage, under a policy.

A request pays each stage it runs on each branch that answered it, and the exit heads the
policy reads: every head on the way for an early-exit policy, and for a policy that
decides nothing on the way (full execution) only the head of the exit it leaves at. The
stage loop charges requests with it as they run; offline evaluation and calibration use
its per-exit totals for a fixed set of branches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distree.exits import StudentMacs
from distree.policies import ExitPolicy


class ExitCosts:
    """MACs per sample of a model's stages and heads, as charged under one policy."""

    def __init__(self, macs: StudentMacs, policy: ExitPolicy):
        self.macs = macs
        self.reads_exits = policy.reads_exits

    def stage(self, k: int, present: Sequence[int]) -> int:
        """Stage ``k`` of the ``present`` branches."""
        return sum(self.macs.stage[b][k] for b in present)

    def head(self, k: int, leaving: bool) -> int:
        """Head ``k``, if the policy pays for it (``leaving``: the request exits at k)."""
        return self.macs.head[k] if self.reads_exits or leaving else 0

    def until(self, e: int, present: Sequence[int] | None = None) -> int:
        """A request that stops at exit ``e`` with the same ``present`` branches (default:
        all) at every stage."""
        branches = range(len(self.macs.stage)) if present is None else present
        return sum(self.stage(k, branches) + self.head(k, k == e) for k in range(e + 1))

    def per_exit(self, present: Sequence[int] | None = None) -> np.ndarray:
        """(E,) float64: ``until(e)`` for every exit e."""
        return np.array([float(self.until(e, present)) for e in range(len(self.macs.head))])

    def full(self, present: Sequence[int] | None = None) -> int:
        """Full execution's cost with the ``present`` branches: every stage, the last head."""
        return self.macs.full(present)
