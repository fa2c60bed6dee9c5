"""The per-exit loss terms of DistrEE joint training."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2 (Hinton et al.).

    (B, K), (B, K) -> scalar; zero when the logits are equal.
    """
    t = temperature
    return (
        F.kl_div(
            # In fp32 under any autocast: CPU autocast leaves log_softmax in bf16.
            F.log_softmax(student_logits.float() / t, dim=-1),
            F.log_softmax(teacher_logits.float() / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


def feature_transfer_loss(projected: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Squared distance between L2-normalised projected embedding and teacher features.

    (B, F), (B, F) -> scalar in [0, 4]; zero when the two point the same way. Normalising
    makes the term independent of the teacher's feature scale.
    """
    p = F.normalize(projected.float(), dim=-1)
    t = F.normalize(teacher_features.float(), dim=-1)
    return (p - t).pow(2).sum(-1).mean()


def branch_dropout_mask(batch: int, branches: int, p: float, device: torch.device) -> torch.Tensor:
    """(B, N) bool: each branch kept with probability 1 - p, at least one kept per sample."""
    keep = torch.rand(batch, branches, device=device) >= p
    if p > 0:
        # A sample that lost every branch gets one back, chosen uniformly.
        none = ~keep.any(1)
        rescue = torch.randint(0, branches, (batch,), device=device)
        keep[none, rescue[none]] = True
    return keep
