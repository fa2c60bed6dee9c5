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
from distree.training.distributed import SINGLE, Ranks
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


#: The linear schedule's learning rate where warm-up starts and where decay ends, relative
#: to the peak (airbench's values: a start at zero wastes the warm-up's first steps, an
#: end above zero keeps the last ones useful).
LINEAR_START, LINEAR_END = 0.2, 0.07


def lr_at(step: int, total: int, warmup: int, base: float, schedule: str = "cosine") -> float:
    """The learning rate at ``step`` of ``total``: a linear warm-up over ``warmup`` steps,
    then a cosine decay to zero (``cosine``) or a linear one to ``LINEAR_END`` x base."""
    start = LINEAR_START if schedule == "linear" else 0.0
    if warmup and step < warmup:
        return base * (start + (1 - start) * (step + 1) / warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return base * (1 - (1 - LINEAR_END) * progress)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


_NORMS = (nn.BatchNorm2d, nn.LayerNorm)


def make_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum over the trainable parameters.

    Two groups, each with an ``lr_scale`` the schedule multiplies by: the normalisation
    layers' parameters at ``norm_lr_scale``, the rest at 1. The normalisation group's
    weight decay is divided by the same scale, so that what it decays per step is unchanged.
    """
    norm_ids = {id(p) for m in module.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    trainable = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in norm_ids], "lr_scale": 1.0, "weight_decay": cfg.weight_decay},
        {
            "params": [p for p in trainable if id(p) in norm_ids],
            "lr_scale": cfg.norm_lr_scale,
            "weight_decay": cfg.weight_decay / cfg.norm_lr_scale,
        },
    ]
    return torch.optim.SGD(
        [g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0
    )


class Lookahead:
    """Lookahead-style weight averaging (airbench): every ``every`` steps the float state
    (weights and BatchNorm statistics) is pulled toward a running average of itself, and
    training continues from the average. The average's memory grows with training (its
    decay is 0.95^every x progress^3), and the phase ends on it.
    """

    def __init__(self, module: nn.Module, every: int):
        self.every = every
        self.module = module
        self.average = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    def after_step(self, step: int, total: int) -> None:
        """Call after optimizer step ``step`` (0-based) of ``total``."""
        done = step + 1
        if done == total:
            self._pull(1.0)  # the weights become the average
        elif done % self.every == 0:
            self._pull(0.95**self.every * (done / total) ** 3)

    @torch.no_grad()
    def _pull(self, decay: float) -> None:
        state = self.module.state_dict()
        for k, avg in self.average.items():
            avg.lerp_(state[k], 1 - decay)
            state[k].copy_(avg)


def train_step(
    obj: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor | None,
    device: torch.device,
    where: str = "",
    weight: float = 1.0,
    precision: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step of ``obj`` on an augmented, normalised batch; returns (loss, terms).

    ``weight``: the gradient is that of ``weight`` x the loss (a rank's share of a batch
    split unevenly between ranks). ``precision``: as ``OptimConfig.precision``.
    """
    with autocast(device, precision):
        loss, terms = obj(x, y, rows)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at {where}; lower the learning rate")
    opt.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
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
    ranks: Ranks = SINGLE,
) -> None:
    """Train ``phase`` to its last epoch, resuming from ``resume_dir`` when a state is there.

    ``deadline`` (a ``time.monotonic()`` value): raise ``TimeLimitReached`` at the first
    epoch boundary after which the next epoch, timed by ``next_epoch_seconds``, would end
    past it. An epoch still running at the deadline is abandoned, not saved.

    ``ranks``: with several, every rank calls this; each trains on its shard of every
    batch and rank 0 alone validates, logs and writes (``training.distributed``).
    """
    memory_format = training_memory_format(device)
    obj = phase.objective.to(device, memory_format=memory_format)
    opt = make_optimizer(obj, phase.optim)
    cfg = phase.optim
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    lookahead = Lookahead(obj, cfg.lookahead_every) if cfg.lookahead_every else None
    extra = {f"lookahead.{k}": v for k, v in lookahead.average.items()} if lookahead else {}
    start = 0
    if ranks.is_main and progress_file(resume_dir, phase.name).is_file():
        start = load_train_state(resume_dir, phase.name, obj, opt, extra)["epochs_done"]
        log(f"{phase.name}: resuming after epoch {start}/{cfg.epochs}")
    if ranks.world > 1:
        start, opt_state, extra_state = ranks.from_main((start, opt.state_dict(), extra))
        opt.load_state_dict(opt_state)
        for k, v in extra_state.items():
            extra[k].copy_(v)
    # DDP starts every rank from rank 0's weights and buffers.
    model = ranks.wrap(obj, device)
    images = train.images.to(device)
    labels = train.labels.to(device)
    # Which images alternate flipping mirrors on even epochs: drawn once per run.
    flip_half = torch.rand(len(train), generator=torch.Generator().manual_seed(seed), device="cpu").to(device) < 0.5
    epoch_seconds = _past_epoch_seconds(metrics_file, phase.name)
    for epoch in range(start, cfg.epochs):
        # Rank 0 alone has the epoch times; every rank takes the decision together.
        next_seconds = next_epoch_seconds(epoch_seconds) if epoch_seconds else 0.0
        if deadline is not None and ranks.any(bool(epoch_seconds) and time.monotonic() + next_seconds > deadline):
            raise TimeLimitReached(
                f"{phase.name}: stopped after epoch {epoch}/{cfg.epochs}: the next one (about "
                f"{next_seconds:.0f} s) would pass the time limit"
            )
        # Seeding per epoch makes an epoch's shuffling, augmentation and drop-out the same
        # whether or not training was interrupted before it.
        epoch_seed = seed * 100_003 + epoch * 7919 + (phase.name == "student")
        torch.manual_seed(epoch_seed)
        perm = torch.randperm(len(train), device=device)
        if ranks.rank:
            # The same batches on every rank, but each rank's own augmentation and drop-out.
            torch.manual_seed(epoch_seed + 1_000_003 * ranks.rank)
        obj.train()
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        quiet = None if ranks.is_main else True
        bar = tqdm(range(steps_per_epoch), desc=f"{phase.name} {epoch + 1}/{cfg.epochs}", disable=quiet, leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total, warmup, cfg.lr, cfg.schedule)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            batch = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            if ranks.world > 1:
                # Every rank a share: a last batch smaller than a multiple of the ranks loses its tail.
                batch = batch[: len(batch) - len(batch) % ranks.world]
                if not len(batch):
                    continue
            idx = ranks.shard(batch)
            if phase.views is not None:
                views, rows = phase.views.draw(idx)
            else:
                views, rows = random_views(idx.shape, data_cfg.crop_padding, data_cfg.flip, device=device), None
                if data_cfg.flip and data_cfg.alternate_flip:
                    views = views._replace(mirror=flip_half[idx] ^ bool(epoch % 2))
            x = apply_views(norm(images[idx]), data_cfg.crop_padding, views, data_cfg.pad_mode)
            x = x.contiguous(memory_format=memory_format)
            where = f"{phase.name} epoch {epoch + 1}, step {i}"
            # DDP averages the ranks' gradients; weighting each by its share of the batch
            # makes that the gradient of the whole batch's mean loss.
            weight = len(idx) * ranks.world / len(batch)
            loss, terms = train_step(
                model, opt, x, labels[idx], rows, device, where=where, weight=weight, precision=cfg.precision
            )
            if lookahead is not None:
                lookahead.after_step(step, total)
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0) + v.float() * len(idx)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
            if deadline is not None and ranks.any(time.monotonic() > deadline):
                raise TimeLimitReached(
                    f"{phase.name}: stopped during epoch {epoch + 1}/{cfg.epochs} at the time limit; "
                    f"it starts again from epoch {epoch + 1}"
                )
        sums = ranks.sum(sums)
        train_terms = {k: round(float(v) / len(train), 5) for k, v in sums.items()}
        if not ranks.is_main:
            ranks.barrier()  # rank 0 validates and saves
            continue
        val = phase.validate()
        record = {
            "phase": phase.name,
            "epoch": epoch + 1,
            "lr_end": round(lr, 6),
            "train": train_terms,
            "val": val,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        save_train_state(resume_dir, phase.name, obj, opt, {"epochs_done": epoch + 1}, extra)
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
        ranks.barrier()
    # The ranks' BatchNorm statistics differ by their last batches: rank 0's are the result.
    ranks.load_from_main(phase.objective.trained)
    if ranks.is_main:
        save_weights(phase.objective.trained, final_weights)
        remove_train_state(resume_dir, phase.name)
    ranks.barrier()


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
