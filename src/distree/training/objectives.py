"""What each training phase optimises: the teacher alone, or the student jointly."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from time import monotonic  # a name of this module's own: tests replace this clock, not every thread's

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from distree.config import DistillConfig
from distree.data.augment import Normalization, Views, apply_views, random_views
from distree.hardware import autocast
from distree.models import DistrEEStudent, Teacher, TeacherOutput
from distree.training.checkpoint import TimeLimitReached
from distree.training.losses import branch_dropout_mask, distillation_loss, feature_transfer_loss


class TeacherObjective(nn.Module):
    """Cross-entropy on the teacher's logits, with ``label_smoothing``."""

    def __init__(self, teacher: Teacher, label_smoothing: float = 0.0):
        super().__init__()
        self.teacher = teacher
        self.label_smoothing = label_smoothing

    @property
    def trained(self) -> nn.Module:
        """The module whose weights are the phase's result."""
        return self.teacher

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, view: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised batch (B, C, H, W), labels (B,) -> (loss, terms to log)."""
        loss = F.cross_entropy(self.teacher(x).logits, y, label_smoothing=self.label_smoothing)
        return loss, {"ce": loss.detach()}


class ViewTable:
    """A fixed set of augmented views of every training image: V per image.

    Without crops (``padding`` 0) the views are every mirroring the data config allows
    (V = 2 with flips), so nothing of the augmentation is lost. With crops, V views per
    image are drawn once (seeded): the student then sees V crops of each image in all,
    against a fresh crop at every epoch when the teacher runs online.
    """

    def __init__(self, num_images: int, padding: int, flip: bool, views: int, seed: int, pad_mode: str = "zeros"):
        self.padding = padding
        self.pad_mode = pad_mode
        if padding == 0:
            mirror = torch.tensor([False, True] if flip else [False]).expand(num_images, -1)
            zeros = torch.zeros(mirror.shape, dtype=torch.long)
            self.views = Views(zeros, zeros, mirror.contiguous())
        else:
            if views < 1:
                raise ValueError(f"a view table with crops needs at least one view per image, got {views}")
            g = torch.Generator().manual_seed(seed)
            self.views = random_views((num_images, views), padding, flip, generator=g)
        self.per_image = self.views.dy.shape[1]

    def draw(self, sample: torch.Tensor) -> tuple[Views, torch.Tensor]:
        """One view at random (global RNG) for each of (B,) image indices: its parameters
        and its row ``sample * V + v`` in the table."""
        v = torch.randint(0, self.per_image, sample.shape, device=sample.device)
        return self.pick(sample, v), sample * self.per_image + v

    def pick(self, sample: torch.Tensor, v: torch.Tensor) -> Views:
        """Parameters (B,) of view ``v`` of image ``sample``."""
        s, v = sample.cpu(), v.cpu()
        return Views(*(t[s, v].to(sample.device) for t in self.views))


class TeacherTargets:
    """The frozen teacher's outputs on every view of a ``ViewTable``, computed once.

    The teacher's forward pass, about a third of a student step on a CPU, then leaves the
    epoch loop. Row ``sample * V + v`` holds view v of image ``sample``.

    With ``store`` (a safetensors file) the outputs survive the process: a later call with
    the same ``key`` (the teacher's weights and the view table) reads them back, and a
    computation stopped at ``deadline`` (a ``time.monotonic()`` value) leaves the images
    done so far there and continues from them. At 8 views of 45,000 CIFAR-10 images this
    is about 40 minutes on 2 cores, and the file (about 290 MB) is too large to commit, so
    it helps a run that continues on the same machine. ``precision``: the teacher's
    arithmetic, as ``OptimConfig.precision`` (the student's is used).
    """

    def __init__(
        self,
        teacher: Teacher,
        images: torch.Tensor,
        norm: Normalization,
        table: ViewTable,
        batch_size: int,
        device: torch.device,
        log: Callable[[str], None] | None = None,
        store: Path | None = None,
        key: str = "",
        deadline: float | None = None,
        precision: str = "auto",
    ):
        v_count = table.per_image
        logits, features, done = _read_targets(store, key) if store is not None else (None, None, 0)
        if logits is None or features is None:
            logits = torch.empty(len(images) * v_count, teacher.num_classes)
            features = torch.empty(len(images) * v_count, teacher.feature_dim)
            done = 0
        if done and log is not None:
            log(f"student: the teacher's outputs on {done}/{len(images)} training images read from {store}")
        teacher.eval()
        rows_per_batch = max(1, batch_size // v_count)
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(done, len(images), rows_per_batch):
                if deadline is not None and monotonic() > deadline:
                    if store is not None:
                        _write_targets(store, key, logits, features, start)
                    raise TimeLimitReached(
                        f"stopped at the time limit while computing the teacher's outputs ({start}/{len(images)} "
                        f"images{', kept in ' + str(store) if store is not None else ''})"
                    )
                sample = torch.arange(start, min(start + rows_per_batch, len(images)))
                sample = sample.repeat_interleave(v_count)
                v = torch.arange(v_count).repeat(len(sample) // v_count)
                x = norm(images[sample].to(device))
                x = apply_views(x, table.padding, table.pick(sample.to(device), v.to(device)), table.pad_mode)
                with autocast(device, precision):
                    out = teacher(x)
                rows = sample * v_count + v
                logits[rows] = out.logits.float().cpu()
                features[rows] = out.features.float().cpu()
                if log is not None and start == done:
                    per_image = (time.perf_counter() - t0) / len(sample)
                    log(
                        f"student: the teacher's outputs on {v_count} views of each of {len(images) - done} training "
                        f"images, about {per_image * (len(images) - done) * v_count / 60:.0f} min"
                    )
        if store is not None and done < len(images):
            _write_targets(store, key, logits, features, len(images))
        self.logits = logits.to(device)
        self.features = features.to(device)

    def lookup(self, rows: torch.Tensor) -> TeacherOutput:
        """Outputs for (B,) rows of the view table."""
        return TeacherOutput(self.logits[rows], self.features[rows])


def _write_targets(store: Path, key: str, logits: torch.Tensor, features: torch.Tensor, done: int) -> None:
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(store.name + f".tmp{os.getpid()}")
    save_file({"logits": logits, "features": features}, str(tmp), metadata={"key": key, "images_done": str(done)})
    os.replace(tmp, store)


def _read_targets(store: Path, key: str) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """The stored outputs and how many images they cover; nothing if absent or for another key."""
    if not store.is_file():
        return None, None, 0
    with safe_open(str(store), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("key") != key:
            return None, None, 0
        return f.get_tensor("logits"), f.get_tensor("features"), int(meta["images_done"])


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
        teacher: Teacher,
        cfg: DistillConfig,
        targets: TeacherTargets | None = None,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.label_smoothing = label_smoothing
        self.targets = targets
        self.projection = nn.Linear(student.config.embed_dim, teacher.feature_dim)
        # Kept out of the module tree: the teacher is frozen and not part of the checkpoint.
        self._teacher = [teacher.eval().requires_grad_(False)]

    @property
    def trained(self) -> nn.Module:
        """The module whose weights are the phase's result."""
        return self.student

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, view: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised batch (B, C, H, W), labels (B,) -> (loss, terms to log).

        ``view`` (B,): the rows of the view table that x holds; with precomputed ``targets``
        they replace the teacher's forward pass.
        """
        if self.targets is not None:
            if view is None:
                raise ValueError("the student objective has precomputed teacher targets: pass the view rows")
            t = self.targets.lookup(view)
        else:
            with torch.no_grad():
                t = self._teacher[0](x)
        mask = None
        if self.cfg.branch_dropout > 0 and self.student.num_branches > 1:
            mask = branch_dropout_mask(x.shape[0], self.student.num_branches, self.cfg.branch_dropout, x.device)
        outs, vectors = self.student.run_exits(x, mask=mask, agreement=False)
        ce = kd = ft = x.new_zeros(())
        for o in outs:
            ce = ce + F.cross_entropy(o.logits, y, label_smoothing=self.label_smoothing)
            kd = kd + distillation_loss(o.logits, t.logits, self.cfg.temperature)
            ft = ft + feature_transfer_loss(self.projection(o.embedding), t.features)
        n = len(outs)
        ce, kd, ft = ce / n, kd / n, ft / n
        loss = ce + self.cfg.kd_weight * kd + self.cfg.ft_weight * ft
        terms = {"ce": ce.detach(), "kd": kd.detach(), "ft": ft.detach()}
        if self.cfg.branch_weight > 0:
            alone = self._branch_term(vectors, y, t.logits)
            loss = loss + self.cfg.branch_weight * alone
            terms["branch"] = alone.detach()
        if self.cfg.subset_weight > 0 and self.student.num_branches > 1:
            subsets = self._subset_term(vectors, y, t.logits)
            loss = loss + self.cfg.subset_weight * subsets
            terms["subset"] = subsets.detach()
        return loss, terms

    def _subset_term(
        self, vectors: list[list[torch.Tensor | None]], y: torch.Tensor, teacher_logits: torch.Tensor
    ) -> torch.Tensor:
        """CE + KD of the first 1 .. N-1 branches of a random wake order per sample (a
        rotation of the branches), fused through every exit head, averaged over all."""
        n, batch = self.student.num_branches, y.shape[0]
        start = torch.randint(0, n, (batch,), device=y.device)
        order = (start[:, None] + torch.arange(n, device=y.device)) % n  # (B, N): the wake order of each sample
        total, count = teacher_logits.new_zeros(()), 0
        for m in range(1, n):
            mask = torch.zeros(batch, n, dtype=torch.bool, device=y.device).scatter_(1, order[:, :m], True)
            for head, per_branch in zip(self.student.heads, vectors):
                out = head(per_branch, mask=mask, agreement=False)
                total = total + self._labels_and_teacher(out.logits, y, teacher_logits)
                count += 1
        return total / count

    def _labels_and_teacher(self, logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """CE on the labels + kd_weight * KD toward the teacher, for one exit's (B, K) logits."""
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return ce + self.cfg.kd_weight * distillation_loss(logits, teacher_logits, self.cfg.temperature)

    def _branch_term(
        self, vectors: list[list[torch.Tensor | None]], y: torch.Tensor, teacher_logits: torch.Tensor
    ) -> torch.Tensor:
        """CE + KD of every branch alone through every exit head, averaged over both."""
        total, count = vectors[0][0].new_zeros(()), 0
        for head, per_branch in zip(self.student.heads, vectors):
            for b, v in enumerate(per_branch):
                alone = head([v if i == b else None for i in range(len(per_branch))], agreement=False)
                total = total + self._labels_and_teacher(alone.logits, y, teacher_logits)
                count += 1
        return total / count
