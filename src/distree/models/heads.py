"""Exit heads: fuse the pooled vectors of whichever branches answered into one embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ExitOutput(NamedTuple):
    embedding: torch.Tensor  # (B, embed_dim)
    logits: torch.Tensor  # (B, num_classes)
    #: (B,) how much the present branches' own features agree: the mean pairwise cosine of
    #: their embeddings (each branch's projection, layer-normalised); -inf with one branch.
    #: None when the head was asked not to compute it.
    agreement: torch.Tensor | None


class ExitRecords(NamedTuple):
    """The outputs of a run of exits for the same rows: each field indexed by exit first,
    a stacked tensor (E, N, ...) or a list of per-exit tensors. Policies read these."""

    logits: Sequence[torch.Tensor]  # [exit] (N, K)
    embeddings: Sequence[torch.Tensor] | None = None  # [exit] (N, D)
    agreement: Sequence[torch.Tensor] | None = None  # [exit] (N,)

    @classmethod
    def of(cls, outputs: Sequence[ExitOutput], stack: bool = True) -> ExitRecords:
        """The records of consecutive exits' outputs: stacked (E, N, ...) or as lists."""
        agreement = None if any(o.agreement is None for o in outputs) else [o.agreement for o in outputs]
        fields = ([o.logits for o in outputs], [o.embedding for o in outputs], agreement)
        return cls(*(f if f is None or not stack else torch.stack(f) for f in fields))

    def until(self, e: int) -> ExitRecords:
        """The records of exits 0..e only."""
        return ExitRecords(*(None if f is None else f[: e + 1] for f in self))


class ExitHead(nn.Module):
    """Fuses any non-empty subset of N branch vectors into an embedding and logits.

    Each branch vector (B, in_dims[b]) is projected to ``embed_dim``; the projections of
    the present branches are averaged (a mean, so the scale does not depend on how many
    devices answered), layer-normalised into the embedding z, and classified linearly.
    The same normalisation applied to each projection alone gives that branch's own
    embedding, which ``agreement`` compares across the present branches.
    """

    def __init__(self, in_dims: Sequence[int], embed_dim: int, num_classes: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, embed_dim) for d in in_dims)
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(
        self, vectors: Sequence[torch.Tensor | None], mask: torch.Tensor | None = None, agreement: bool = True
    ) -> ExitOutput:
        """Fuse ``vectors`` (one per branch, None where the branch is absent).

        ``mask`` (B, N) bool optionally removes branches per sample; a masked-out vector
        has no influence at all, even if it holds NaNs. ``agreement=False`` leaves the
        output's agreement None: it is a second normalisation of every projection, work
        on the coordinator's per-stage path that only one policy needs.
        """
        if len(vectors) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} branch vectors, got {len(vectors)}")
        projected, keeps = self.project(vectors, mask)
        if not projected:
            raise ValueError("an exit head needs at least one branch vector")
        if bool((sum(keeps[1:], keeps[0]) == 0).any()):
            raise ValueError("every sample needs at least one present branch")
        return self.fuse(projected, keeps, agreement)

    def project(
        self, vectors: Sequence[torch.Tensor | None], mask: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The present branches' projections (B, embed_dim), zero where ``mask`` removes a
        sample, and their keep flags (B, 1)."""
        projected, keeps = [], []
        for b, v in enumerate(vectors):
            if v is None:
                continue
            p = self.proj[b](v)
            if mask is None:
                keep = torch.ones(p.shape[0], 1, dtype=p.dtype, device=p.device)
            else:
                keep = mask[:, b : b + 1].to(p.dtype)
                p = torch.where(keep.bool(), p, torch.zeros((), dtype=p.dtype, device=p.device))
            projected.append(p)
            keeps.append(keep)
        return projected, keeps

    def fuse(self, projected: list[torch.Tensor], keeps: list[torch.Tensor], agreement: bool = True) -> ExitOutput:
        """The embedding, logits and agreement from ``project``'s output, unchecked (every
        sample needs a kept branch): what an exported head computes."""
        count = sum(keeps[1:], keeps[0])
        z = self.norm(sum(projected[1:], projected[0]) / count)
        agree = self._agreement(torch.stack(projected), torch.stack(keeps), count) if agreement else None
        return ExitOutput(z, self.classifier(z), agree)

    def _agreement(self, projected: torch.Tensor, keep: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """Mean pairwise cosine (B,) of the branches' own embeddings, from the present
        branches' projections (n, B, D), their keep flags (n, B, 1) and counts (B, 1)."""
        own = F.normalize(self.norm(projected), dim=-1) * keep
        return _mean_pairwise_cosine(own.sum(0), count.squeeze(-1))


def _mean_pairwise_cosine(unit_sum: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the pairs of n unit vectors, from their sum (B, D) and n (B,).

    sum_{i<j} u_i.u_j = (|sum u|^2 - n) / 2 over n(n-1)/2 pairs; -inf where n < 2.
    """
    pairs = n * (n - 1)
    value = (unit_sum.pow(2).sum(-1) - n) / pairs.clamp(min=1)
    return torch.where(pairs > 0, value, torch.full_like(value, float("-inf")))
