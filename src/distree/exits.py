"""What the exits give and what reaching them costs, with no torch: the vocabulary the
exit heads, the policies and the stage loop share.

The arrays are torch tensors where the model runs in PyTorch, numpy arrays where it runs
from an ONNX export (a coordinator without torch); the code that reads them takes
either (``distree.arrays``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from distree.arrays import namespace

#: A torch tensor or a numpy array.
Array = Any


class ExitOutput(NamedTuple):
    embedding: Array  # (B, embed_dim)
    logits: Array  # (B, num_classes)
    #: (B,) how much the present branches' own features agree: the mean pairwise cosine of
    #: their embeddings (each branch's projection, layer-normalised); -inf with one branch.
    #: None when the head was asked not to compute it.
    agreement: Array | None


class ExitRecords(NamedTuple):
    """The outputs of a run of exits for the same rows: each field indexed by exit first,
    a stacked array (E, N, ...) or a list of per-exit arrays. Policies read these."""

    logits: Sequence[Array]  # [exit] (N, K)
    embeddings: Sequence[Array] | None = None  # [exit] (N, D)
    agreement: Sequence[Array] | None = None  # [exit] (N,)

    @classmethod
    def of(cls, outputs: Sequence[ExitOutput], stack: bool = True) -> ExitRecords:
        """The records of consecutive exits' outputs: stacked (E, N, ...) or as lists."""
        agreement = None if any(o.agreement is None for o in outputs) else [o.agreement for o in outputs]
        fields = ([o.logits for o in outputs], [o.embedding for o in outputs], agreement)
        if not stack:
            return cls(*fields)
        xp = namespace(outputs[0].logits)
        return cls(*(None if f is None else xp.stack(f) for f in fields))

    def until(self, e: int) -> ExitRecords:
        """The records of exits 0..e only."""
        return ExitRecords(*(None if f is None else f[: e + 1] for f in self))


@dataclass(frozen=True)
class StudentMacs:
    """Per-sample multiply-accumulates of every stage of every branch and of every head."""

    stage: list[list[int]]  # [branch][stage]
    head: list[int]  # [exit], with all branches present

    def stages_until(self, exit_index: int, present: Sequence[int] | None = None) -> int:
        """MACs of stages 0..e of the present branches (default: all)."""
        branches = range(len(self.stage)) if present is None else present
        return sum(sum(self.stage[b][: exit_index + 1]) for b in branches)

    def exit_cumulative(self, exit_index: int, present: Sequence[int] | None = None) -> int:
        """MACs to reach and decide at exit ``exit_index``: stages 0..e of the present
        branches plus heads 0..e (a policy evaluates every head on the way)."""
        return self.stages_until(exit_index, present) + sum(self.head[: exit_index + 1])

    def full(self, present: Sequence[int] | None = None) -> int:
        """MACs of full execution: every stage of the present branches plus the last head."""
        return self.stages_until(len(self.head) - 1, present) + self.head[-1]
