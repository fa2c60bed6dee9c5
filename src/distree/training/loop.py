"""The epoch loop shared by both training phases: schedule, progress, metrics, resume."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from distree.config import DataConfig, OptimConfig
from distree.data.augment import Normalization, apply_views, random_views
from distree.data.dataset import ImageSet
from distree.hardware import autocast, training_memory_format
from distree.training.checkpoint import (
    TimeLimitReached,
    load_train_state,
    progress_file,
    remove_train_state,
    save_train_state,
)
from distree.training.objectives import ViewTable
from distree.weights import save_weights


@dataclass
class Phase:
    """One training phase: an objective module and how to validate it."""

    name: str
    objective: nn.Module  # forward(x, y, view rows or None) -> (loss, {term: tensor}); .trained is the result
    optim: OptimConfig
    validate: Callable[[], dict[str, object]]
    #: Train on these fixed views of each image (the objective's precomputed targets), not fresh random ones.
    views: ViewTable | None = None


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum over the trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
    )


def train_step(
    obj: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor | None,
    device: torch.device,
    where: str = "",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step of ``obj`` on an augmented, normalised batch; returns (loss, terms)."""
    with autocast(device):
        loss, terms = obj(x, y, rows)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at {where}; lower the learning rate")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, terms


def train_phase(
    phase: Phase,
    train: ImageSet,
    norm: Normalization,
    data_cfg: DataConfig,
    seed: int,
    device: torch.device,
    resume_dir: Path,
    metrics_file: Path,
    final_weights: Path,
    log: Callable[[str], None] = print,
    deadline: float | None = None,
) -> None:
    """Train ``phase`` to its last epoch, resuming from ``resume_dir`` when a state is there.

    ``deadline`` (a ``time.monotonic()`` value): raise ``TimeLimitReached`` at the first
    epoch boundary after which the next epoch, timed by ``next_epoch_seconds``, would end
    past it. An epoch still running at the deadline is abandoned, not saved.
    """
    memory_format = training_memory_format(device)
    obj = phase.objective.to(device, memory_format=memory_format)
    opt = make_optimizer(obj, phase.optim)
    cfg = phase.optim
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    start = 0
    if progress_file(resume_dir, phase.name).is_file():
        start = load_train_state(resume_dir, phase.name, obj, opt)["epochs_done"]
        log(f"{phase.name}: resuming after epoch {start}/{cfg.epochs}")
    images = train.images.to(device)
    labels = train.labels.to(device)
    epoch_seconds = _past_epoch_seconds(metrics_file, phase.name)
    for epoch in range(start, cfg.epochs):
        if deadline is not None and epoch_seconds and time.monotonic() + next_epoch_seconds(epoch_seconds) > deadline:
            raise TimeLimitReached(
                f"{phase.name}: stopped after epoch {epoch}/{cfg.epochs}: the next one (about "
                f"{next_epoch_seconds(epoch_seconds):.0f} s) would pass the time limit"
            )
        # Seeding per epoch makes an epoch's shuffling, augmentation and drop-out the same
        # whether or not training was interrupted before it.
        torch.manual_seed(seed * 100_003 + epoch * 7919 + (phase.name == "student"))
        perm = torch.randperm(len(train), device=device)
        obj.train()
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"{phase.name} {epoch + 1}/{cfg.epochs}", disable=None, leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total, warmup, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if phase.views is not None:
                views, rows = phase.views.draw(idx)
            else:
                views, rows = random_views(idx.shape, data_cfg.crop_padding, data_cfg.flip, device=device), None
            x = apply_views(norm(images[idx]), data_cfg.crop_padding, views).contiguous(memory_format=memory_format)
            loss, terms = train_step(
                obj, opt, x, labels[idx], rows, device, f"{phase.name} epoch {epoch + 1}, step {i}"
            )
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0) + v.float() * len(idx)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeLimitReached(
                    f"{phase.name}: stopped during epoch {epoch + 1}/{cfg.epochs} at the time limit; "
                    f"it starts again from epoch {epoch + 1}"
                )
        train_terms = {k: round(float(v) / len(train), 5) for k, v in sums.items()}
        val = phase.validate()
        record = {
            "phase": phase.name,
            "epoch": epoch + 1,
            "lr_end": round(lr, 6),
            "train": train_terms,
            "val": val,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        save_train_state(resume_dir, phase.name, obj, opt, {"epochs_done": epoch + 1})
        # Written after the state, so that every epoch in the log can be resumed from.
        with metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        epoch_seconds.append(record["seconds"])
        left = cfg.epochs - epoch - 1
        eta = (
            f", {phase.name} done in about {_duration(left * statistics.median(epoch_seconds[-RECENT_EPOCHS:]))}"
            if left
            else ""
        )
        log(
            f"{phase.name} epoch {epoch + 1}/{cfg.epochs}: "
            f"loss {train_terms['loss']:.4f} val {val} ({record['seconds']}s{eta})"
        )
    save_weights(phase.objective.trained, final_weights)
    remove_train_state(resume_dir, phase.name)


#: Epochs that ``next_epoch_seconds`` looks back over.
RECENT_EPOCHS = 3


def next_epoch_seconds(past: list[float]) -> float:
    """How long the next epoch may take: the slowest of the last few.

    The slowest of the recent ones, not of all: an epoch slowed by other work on the
    machine sessions ago should not cut every later session short by its length.
    """
    return max(past[-RECENT_EPOCHS:])


def _past_epoch_seconds(metrics_file: Path, phase: str) -> list[float]:
    """Durations of this phase's epochs logged by earlier processes (for the time limit)."""
    if not metrics_file.is_file():
        return []
    rows = (json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip())
    return [r["seconds"] for r in rows if r.get("phase") == phase]


def _duration(seconds: float) -> str:
    """``3 h 05 min`` / ``12 min`` / ``40 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
