"""What a simulated DistrEE request answers: the real heads fused over the branches it got.

Predictions and policy scores of every exit, for every sample, are computed once per set of
branches that a simulated request actually used (a bitmask), with the run's exit heads and
the same ``fuse_exits`` and ``exit_scores`` offline evaluation uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distree.evaluation.predict import fuse_exits
from distree.models import DistrEEStudent, ExitRecords
from distree.policies import ExitPolicy, exit_scores, make_policy


def mask_of(branches: Sequence[int]) -> int:
    """Bitmask of a set of branch indices."""
    return sum(1 << b for b in branches)


class ExitTables:
    """Lazily computed (E, N) predictions and per-policy scores for each branch set."""

    def __init__(self, student: DistrEEStudent, vectors: list[list[torch.Tensor]], labels: torch.Tensor):
        self.student = student.eval()
        self.vectors = vectors
        self.labels = labels
        self._policies: dict[str, ExitPolicy] = {}
        self._preds: dict[int, torch.Tensor] = {}
        self._scores: dict[tuple[str, int], torch.Tensor] = {}

    def _present(self, mask: int) -> list[int]:
        return [b for b in range(self.student.num_branches) if mask >> b & 1]

    def policy(self, name: str) -> ExitPolicy:
        """The policy object (cached)."""
        if name not in self._policies:
            self._policies[name] = make_policy(name, self.labels)
        return self._policies[name]

    def _fill(self, mask: int, policies: Sequence[str]) -> None:
        rec = fuse_exits(self.student, self.vectors, self._present(mask))
        self._preds[mask] = rec.logits.argmax(-1)
        for name in policies:
            self._scores[(name, mask)] = exit_scores(self.policy(name), rec)

    def prediction(self, mask: int, exit_index: int, sample: int) -> int:
        """Class predicted at ``exit_index`` with the branches in ``mask``."""
        if mask not in self._preds:
            self._fill(mask, [])
        return int(self._preds[mask][exit_index, sample])

    def score(self, policy: str, masks: Sequence[int], sample: int) -> float:
        """The policy's score at exit len(masks) - 1, where exit i fused the branches masks[i]."""
        e, last = len(masks) - 1, masks[-1]
        if all(m == last for m in masks):
            if (policy, last) not in self._scores:
                self._fill(last, [policy])
            return float(self._scores[(policy, last)][e, sample])
        # The branch set changed during the request: fuse this sample's history exactly.
        outs = []
        with torch.no_grad():
            for i, m in enumerate(masks):
                keep = set(self._present(m))
                outs.append(
                    self.student.heads[i](
                        [
                            self.vectors[b][i][sample : sample + 1] if b in keep else None
                            for b in range(len(self.vectors))
                        ]
                    )
                )
        return float(self.policy(policy).score(e, ExitRecords.of(outs, stack=False))[0])
