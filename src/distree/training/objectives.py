"""What each training phase optimises: the teacher alone, or the student jointly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distree.config import DistillConfig
from distree.data.augment import Normalization
from distree.hardware import autocast
from distree.models import DistrEEStudent, TeacherOutput, WideResNet
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

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, sample: torch.Tensor | None = None, mirror: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised batch (B, C, H, W), labels (B,) -> (loss, terms to log)."""
        loss = F.cross_entropy(self.teacher(x).logits, y)
        return loss, {"ce": loss.detach()}


class TeacherTargets:
    """The frozen teacher's outputs on every view of every training image, computed once.

    Possible when augmentation has two views per image (flip or not, no crop): the
    teacher's forward pass, about a fifth of a student step on a CPU, then leaves the
    epoch loop. Row ``sample * 2 + mirror`` holds one view.
    """

    def __init__(
        self, teacher: WideResNet, images: torch.Tensor, norm: Normalization, batch_size: int, device: torch.device
    ):
        logits, features = [], []
        teacher.eval()
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = norm(images[start : start + batch_size].to(device))
                with autocast(device):
                    views = [teacher(x), teacher(x.flip(3))]
                # Interleave so that row 2*i + m is image i, mirrored when m == 1.
                logits.append(torch.stack([v.logits for v in views], 1).flatten(0, 1))
                features.append(torch.stack([v.features for v in views], 1).flatten(0, 1))
        self.logits = torch.cat(logits)
        self.features = torch.cat(features)

    def lookup(self, sample: torch.Tensor, mirror: torch.Tensor) -> TeacherOutput:
        """Outputs for (B,) training indices and (B,) bool mirror flags."""
        rows = sample * 2 + mirror.long()
        return TeacherOutput(self.logits[rows], self.features[rows])


class StudentObjective(nn.Module):
    """DistrEE joint training: every exit of every branch subset learns together.

    Per exit e: CE(labels) + kd_weight * KD(teacher logits) + ft_weight * FT(teacher
    features). One projection, shared by all exits, maps exit embeddings to the teacher's
    penultimate features: every exit is pulled toward the same target in the same space,
    so the distance between consecutive exits' embeddings means the same thing at every
    exit, which the feature-difference exit policy relies on.
    """

    def __init__(
        self,
        student: DistrEEStudent,
        teacher: WideResNet,
        cfg: DistillConfig,
        targets: TeacherTargets | None = None,
    ):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.targets = targets
        self.projection = nn.Linear(student.config.embed_dim, teacher.feature_dim)
        # Kept out of the module tree: the teacher is frozen and not part of the checkpoint.
        self._teacher = [teacher.eval().requires_grad_(False)]

    @property
    def trained(self) -> nn.Module:
        """The module whose weights are the phase's result."""
        return self.student

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, sample: torch.Tensor | None = None, mirror: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised batch (B, C, H, W), labels (B,) -> (loss, terms to log).

        ``sample`` (B,) and ``mirror`` (B,) say which training view x is; with precomputed
        ``targets`` they replace the teacher's forward pass.
        """
        if self.targets is not None and sample is not None and mirror is not None:
            t = self.targets.lookup(sample, mirror)
        else:
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
