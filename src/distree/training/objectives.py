"""What each training phase optimises: the teacher alone, or the student jointly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distree.config import DistillConfig
from distree.models import DistrEEStudent, WideResNet
from distree.training.losses import branch_dropout_mask, distillation_loss, feature_transfer_loss


class TeacherObjective(nn.Module):
    """Cross-entropy on the teacher's logits."""

    def __init__(self, teacher: WideResNet):
        super().__init__()
        self.teacher = teacher

    @property
    def trained(self) -> nn.Module:
        """The module whose weights are the phase's result."""
        return self.teacher

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised batch (B, C, H, W), labels (B,) -> (loss, terms to log)."""
        loss = F.cross_entropy(self.teacher(x).logits, y)
        return loss, {"ce": loss.detach()}


class StudentObjective(nn.Module):
    """DistrEE joint training: every exit of every branch subset learns together.

    Per exit e: CE(labels) + kd_weight * KD(teacher logits) + ft_weight * FT(teacher
    features). One projection, shared by all exits, maps exit embeddings to the teacher's
    penultimate features: every exit is pulled toward the same target in the same space,
    so the distance between consecutive exits' embeddings means the same thing at every
    exit, which the feature-difference exit policy relies on.
    """

    def __init__(self, student: DistrEEStudent, teacher: WideResNet, cfg: DistillConfig):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.projection = nn.Linear(student.config.embed_dim, teacher.feature_dim)
        # Kept out of the module tree: the teacher is frozen and not part of the checkpoint.
        self._teacher = [teacher.eval().requires_grad_(False)]

    @property
    def trained(self) -> nn.Module:
        """The module whose weights are the phase's result."""
        return self.student

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised batch (B, C, H, W), labels (B,) -> (loss, terms to log)."""
        with torch.no_grad():
            t = self._teacher[0](x)
        mask = None
        if self.cfg.branch_dropout > 0 and self.student.num_branches > 1:
            mask = branch_dropout_mask(x.shape[0], self.student.num_branches, self.cfg.branch_dropout, x.device)
        outs = self.student(x, mask=mask)
        ce = kd = ft = x.new_zeros(())
        for o in outs:
            ce = ce + F.cross_entropy(o.logits, y)
            kd = kd + distillation_loss(o.logits, t.logits, self.cfg.temperature)
            ft = ft + feature_transfer_loss(self.projection(o.embedding), t.features)
        n = len(outs)
        ce, kd, ft = ce / n, kd / n, ft / n
        loss = ce + self.cfg.kd_weight * kd + self.cfg.ft_weight * ft
        return loss, {"ce": ce.detach(), "kd": kd.detach(), "ft": ft.detach()}
