"""Fuse, decide, drop: one stage of early-exit inference over a batch of inputs.

The coordinator and the in-process reference both run their stage loops through
``ExitLoop``, so the distributed runtime and the one-process figure it is compared with
cannot decide differently.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distree.models.heads import ExitOutput, ExitRecords
from distree.policies import ExitPolicy, ExitThresholds


class ExitLoop:
    """The rows (inputs) of one batch on their way through the exits.

    After each stage the caller hands in the branch vectors of the rows still running;
    rows the policy (or a deadline) stops leave with their logits, the others go on.
    """

    def __init__(self, heads: nn.ModuleList, policy: ExitPolicy, thresholds: ExitThresholds, rows: int):
        self.heads = heads
        self.policy = policy
        self.thresholds = thresholds
        self.alive = torch.arange(rows)  # original row index of each running row
        self.exit = torch.full((rows,), -1, dtype=torch.long)
        self.reason: list[str] = [""] * rows
        self.logits: torch.Tensor | None = None  # (rows, classes) at each row's exit
        self._outputs: list[ExitOutput] = []  # per stage so far, running rows only

    @property
    def done(self) -> bool:
        """Every row has exited."""
        return self.alive.numel() == 0

    @torch.no_grad()
    def step(self, k: int, vectors: Sequence[torch.Tensor | None], force: torch.Tensor | None = None) -> torch.Tensor:
        """Fuse stage ``k``'s vectors (per branch (A, d) for the A running rows, None for
        a branch that did not answer) and decide; ``force`` (A,) bool stops rows whatever
        the policy says (a deadline). Returns (A,) bool: the rows that go on."""
        last = k == len(self.heads) - 1
        running = self.alive.numel()
        if self.policy.reads_exits:
            out = self.heads[k](vectors, agreement=self.policy.reads_agreement)
            self._outputs.append(out)
            thresholds = self.thresholds.at(sum(v is not None for v in vectors))
            stop = self.policy.should_exit(k, ExitRecords.of(self._outputs, stack=False), thresholds)
        else:
            if not last and (force is None or not bool(force.any())):
                return torch.ones(running, dtype=torch.bool)  # no row leaves: no head to run
            out = self.heads[k](vectors, agreement=False)
            stop = torch.full((running,), last)
        if self.logits is None:
            self.logits = torch.zeros(self.exit.numel(), out.logits.shape[-1])
        forced = torch.zeros_like(stop) if force is None else force & ~stop
        stop = stop | forced
        if not bool(stop.any()):  # the common case: every row goes on, nothing to re-index
            return ~stop
        rows = self.alive[stop]
        self.exit[rows] = k
        self.logits[rows] = out.logits[stop].float()
        for r, f in zip(rows.tolist(), forced[stop].tolist()):
            self.reason[r] = "deadline" if f else ("last-exit" if last else "policy")
        keep = ~stop
        self.alive = self.alive[keep]
        self._outputs = [ExitOutput(*(None if t is None else t[keep] for t in o)) for o in self._outputs]
        return keep

    def predictions(self) -> torch.Tensor:
        """(rows,) class of every row that has exited."""
        assert self.logits is not None, "no stage has run"
        return self.logits.argmax(-1)
