"""Exit heads: fuse the pooled vectors of whichever branches answered into one embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


class ExitOutput(NamedTuple):
    embedding: torch.Tensor  # (B, embed_dim)
    logits: torch.Tensor  # (B, num_classes)


class ExitHead(nn.Module):
    """Fuses any non-empty subset of N branch vectors into an embedding and logits.

    Each branch vector (B, in_dims[b]) is projected to ``embed_dim``; the projections of
    the present branches are averaged (a mean, so the scale does not depend on how many
    devices answered), layer-normalised into the embedding z, and classified linearly.
    """

    def __init__(self, in_dims: Sequence[int], embed_dim: int, num_classes: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, embed_dim) for d in in_dims)
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, vectors: Sequence[torch.Tensor | None], mask: torch.Tensor | None = None) -> ExitOutput:
        """Fuse ``vectors`` (one per branch, None where the branch is absent).

        ``mask`` (B, N) bool optionally removes branches per sample; a masked-out vector
        has no influence at all, even if it holds NaNs.
        """
        if len(vectors) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} branch vectors, got {len(vectors)}")
        total = None
        count = None
        for b, v in enumerate(vectors):
            if v is None:
                continue
            p = self.proj[b](v)
            if mask is None:
                keep = torch.ones(p.shape[0], 1, dtype=p.dtype, device=p.device)
            else:
                keep = mask[:, b : b + 1].to(p.dtype)
                p = torch.where(keep.bool(), p, torch.zeros((), dtype=p.dtype, device=p.device))
            total = p if total is None else total + p
            count = keep if count is None else count + keep
        if total is None:
            raise ValueError("an exit head needs at least one branch vector")
        if bool((count == 0).any()):
            raise ValueError("every sample needs at least one present branch")
        z = self.norm(total / count)
        return ExitOutput(z, self.classifier(z))
