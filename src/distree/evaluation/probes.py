"""Fitting the exit heads of the single-device early-exit baseline on a frozen teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distree.data.augment import Normalization
from distree.models.probes import TeacherExits
from distree.models.teacher import Teacher


@torch.no_grad()
def pooled_features(
    exits: TeacherExits, teacher: Teacher, images: torch.Tensor, norm: Normalization, batch_size: int
) -> list[torch.Tensor]:
    """Pooled teacher features (N, C_i) at every head for uint8 images (N, C, H, W)."""
    teacher.eval()
    parts: list[list[torch.Tensor]] = [[] for _ in exits.heads]
    for start in range(0, len(images), batch_size):
        for i, v in enumerate(exits.pooled(teacher, norm(images[start : start + batch_size]))):
            parts[i].append(v)
    return [torch.cat(p) for p in parts]


def fit_teacher_exits(
    exits: TeacherExits,
    features: list[torch.Tensor],
    labels: torch.Tensor,
    steps: int = 300,
    lr: float = 0.01,
    seed: int = 0,
) -> list[float]:
    """Train every head on cached features with full-batch Adam; returns final train losses.

    The teacher stays frozen, so features are computed once and each head is a small
    convex-ish problem: a few hundred full-batch steps converge in seconds.
    """
    torch.manual_seed(seed)
    opt = torch.optim.Adam(exits.parameters(), lr=lr, weight_decay=1e-4)
    exits.train()
    for _ in range(steps):
        losses = [F.cross_entropy(logits, labels) for logits in exits(features)]
        opt.zero_grad(set_to_none=True)
        sum(losses).backward()
        opt.step()
    exits.eval()
    return [round(float(v.detach()), 4) for v in losses]
