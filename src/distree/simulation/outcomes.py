"""What a simulated DistrEE request answers: the real heads fused over the branches it got.

Every exit's outputs, for every sample, are computed once per set of branches that a
simulated request actually used (a bitmask), with the run's exit heads and the same
``fuse_exits`` offline evaluation uses; the stage loop of each simulated request reads
its rows from them (``ExitTables.fusion``) instead of running the heads again.
"""

from __future__ import annotations

from collections.abc import Sequence

import array_api_compat.torch
import torch

from distree.inference.records import fuse_exits
from distree.inference.stage_loop import Fusion
from distree.models import DistrEEStudent, ExitOutput, ExitRecords


def mask_of(branches: Sequence[int]) -> int:
    """Bitmask of a set of branch indices."""
    return sum(1 << b for b in branches)


class ExitTables:
    """Lazily computed exit records (E, N, ...) of every sample for each branch set."""

    def __init__(self, student: DistrEEStudent, vectors: list[list[torch.Tensor]], labels: torch.Tensor):
        self.student = student.eval()
        self.vectors = vectors
        self.labels = labels
        self._records: dict[int, ExitRecords] = {}

    def records(self, present: Sequence[int]) -> ExitRecords:
        """Every exit's outputs fused from the ``present`` branches (cached)."""
        mask = mask_of(present)
        if mask not in self._records:
            self._records[mask] = fuse_exits(self.student, self.vectors, present)
        return self._records[mask]

    def fusion(self, sample: int) -> Fusion:
        """The stage loop's fusion for one request on ``sample``: the recorded outputs of
        the branches that answered each stage, exactly as the heads would fuse them."""
        return _SampleFusion(self, sample)

    def sample_vectors(self, sample: int, k: int, present: Sequence[int]) -> list[torch.Tensor | None]:
        """Stage ``k``'s recorded vectors (1, d) of ``sample`` from the ``present`` branches."""
        keep = set(present)
        return [
            self.vectors[b][k][sample : sample + 1] if b in keep else None for b in range(self.student.num_branches)
        ]


class _SampleFusion:
    """``ExitTables.fusion``: one sample's rows of the recorded exit outputs."""

    xp = array_api_compat.torch

    def __init__(self, tables: ExitTables, sample: int):
        self.tables, self.sample = tables, sample

    def __call__(self, k: int, vectors: Sequence[torch.Tensor | None], agreement: bool) -> ExitOutput:
        rec = self.tables.records([b for b, v in enumerate(vectors) if v is not None])
        rows = slice(self.sample, self.sample + 1)
        agree = rec.agreement[k][rows] if agreement and rec.agreement is not None else None
        return ExitOutput(rec.embeddings[k][rows], rec.logits[k][rows], agree)
