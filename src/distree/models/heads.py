"""Exit heads: fuse the pooled vectors of whichever branches answered into one embedding."""

from __future__ import annotations

from collections.abc import Sequence

import array_api_compat.torch
import torch
import torch.nn.functional as F
from torch import nn

from distree.exits import ExitOutput


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
        if mask is None and not agreement:
            return self._fuse_present(vectors)
        projected, keeps = self.project(vectors, mask)
        if not projected:
            raise ValueError("an exit head needs at least one branch vector")
        if bool((sum(keeps[1:], keeps[0]) == 0).any()):
            raise ValueError("every sample needs at least one present branch")
        return self.fuse(projected, keeps, agreement)

    def _fuse_present(self, vectors: Sequence[torch.Tensor | None]) -> ExitOutput:
        """``fuse(*project(vectors))`` without agreement when every sample has every present
        branch (no mask): the same arithmetic, with no keep flags to build and sum. The
        stage loop takes it at every step on the coordinator, where a head's cost is torch's
        per-operation overhead rather than its MACs (training takes it too, for a branch
        alone and without drop-out)."""
        projected = [
            F.linear(v, self.proj[b].weight, self.proj[b].bias) for b, v in enumerate(vectors) if v is not None
        ]
        if not projected:
            raise ValueError("an exit head needs at least one branch vector")
        total = sum(projected[1:], projected[0])
        # By a tensor, as fuse divides by its counts: CUDA turns a division by a Python
        # number into a multiplication by its reciprocal, which can differ in the last bit.
        z = self.norm(total / total.new_full((1, 1), len(projected)))
        return ExitOutput(z, self.classifier(z), None)

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


class HeadFusion:
    """A student's exit heads as the stage loop calls them (``distree.inference.stage_loop.Fusion``):
    on torch tensors, without autograd."""

    xp = array_api_compat.torch

    def __init__(self, heads: nn.ModuleList):
        self.heads = heads

    @torch.inference_mode()
    def __call__(self, k: int, vectors: Sequence[torch.Tensor | None], agreement: bool) -> ExitOutput:
        return self.heads[k](vectors, agreement=agreement)
