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
from distree.policies.schedule import Schedule, Step, awake_branches


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

    def device(self, b: int, step: Step, start: int) -> int:
        """What device ``b`` has run for an input that started on ``start`` and stops at
        ``step`` of a schedule: every stage to the step's exit if it is awake by then (a
        device woken late catches up from stage 0), else nothing."""
        if b not in awake_branches(step, start, len(self.macs.stage)):
            return 0
        return sum(self.macs.stage[b][k] for k in range(step.exit + 1))

    def per_step(self, schedule: Schedule, start: int) -> np.ndarray:
        """(L,) float64: what an input that starts on ``start`` costs if it stops at each
        step of ``schedule``: the stages its awake devices ran, and the heads of the steps
        on the way (every one for a policy that reads exits; a policy that reads none pays
        only the head it leaves at, as ``until`` does)."""
        n = len(self.macs.stage)
        out = []
        for i, step in enumerate(schedule.steps):
            stages = sum(self.device(b, step, start) for b in range(n))
            heads = sum(self.head(s.exit, j == i) for j, s in enumerate(schedule.steps[: i + 1]))
            out.append(float(stages + heads))
        return np.array(out)
