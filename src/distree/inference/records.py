"""Offline execution: the model over a whole split, its records (``ExitRecords``).

``branch_vectors`` runs every branch once, stage by stage (the path training's validation,
evaluation, calibration and the simulator's trace all use); ``fuse_exits`` fuses them with
the exit heads for any set of branches; ``exit_costs`` is what stopping at each exit costs
by the stage loop's rule (``ExitCosts``). What is measured on the records is in
``distree.evaluation.measures``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch
import torch.nn.functional as F

from distree.data.augment import Normalization
from distree.exits import ExitOutput
from distree.hardware import autocast
from distree.inference.costs import ExitCosts
from distree.models import DistrEEStudent, ExitRecords, Teacher
from distree.policies import make_policy
from distree.policies.schedule import Schedule, Step, awake_branches


def _batches(images: torch.Tensor, batch_size: int):
    for i in range(0, images.shape[0], batch_size):
        yield images[i : i + batch_size]


def _prepare(model: torch.nn.Module) -> None:
    # The weights keep their memory format: converting them here would change the
    # numerics of a model that is still training (validation runs between epochs).
    model.eval()


def _input(x: torch.Tensor, norm: Normalization, device: torch.device) -> torch.Tensor:
    # A channels_last input is enough for oneDNN to run the convolutions channels_last.
    return norm(x.to(device)).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def teacher_logits(
    model: Teacher,
    images: torch.Tensor,
    norm: Normalization,
    batch_size: int,
    device: torch.device,
    tta: bool = False,
) -> torch.Tensor:
    """Teacher logits (N, K) for uint8 images (N, C, H, W).

    ``tta``: test-time augmentation, the logits averaged over views of each image: half
    the weight on the image and its mirror, half on the mirrored pairs shifted one pixel
    up-left and down-right (reflected borders), six passes in all.
    """
    _prepare(model)
    out = []
    for raw in _batches(images, batch_size):
        x = _input(raw, norm, device)
        with autocast(device):
            logits = _mirrored(model, x) if tta else model(x).logits
            if tta:
                h, w = x.shape[2:]
                padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
                shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
                logits = 0.5 * logits + 0.25 * sum(_mirrored(model, s) for s in shifted)
        out.append(logits.float().cpu())
    return torch.cat(out)


def _mirrored(model: Teacher, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).logits + model(x.flip(3)).logits)


@torch.no_grad()
def branch_vectors(
    model: DistrEEStudent, images: torch.Tensor, norm: Normalization, batch_size: int, device: torch.device
) -> list[list[torch.Tensor]]:
    """Pooled vectors [branch][exit] (N, C) of every branch, run stage by stage once."""
    _prepare(model)
    out: list[list[list[torch.Tensor]]] = [[[] for _ in range(model.num_exits)] for _ in model.branches]
    for raw in _batches(images, batch_size):
        x = _input(raw, norm, device)
        for b, branch in enumerate(model.branches):
            with autocast(device):
                pooled = branch(x)
            for e, v in enumerate(pooled):
                out[b][e].append(v.float().cpu())
    return [[torch.cat(parts) for parts in per_exit] for per_exit in out]


@torch.no_grad()
def fuse_exits(
    model: DistrEEStudent, vectors: list[list[torch.Tensor]], present: Sequence[int] | None = None
) -> ExitRecords:
    """Every exit's logits and embedding from precomputed branch vectors, fusing only the
    ``present`` branches (default: all). Heads are cheap, so every subset reuses one pass."""
    model.eval()
    keep = set(range(model.num_branches) if present is None else present)
    head_device = next(model.heads.parameters()).device
    rec = ExitRecords.of(
        [
            head([vectors[b][e].to(head_device) if b in keep else None for b in range(model.num_branches)])
            for e, head in enumerate(model.heads)
        ]
    )
    # (E, N, K), (E, N, D), (E, N), float32 on the CPU
    return ExitRecords(*(f.float().cpu() for f in rec))


@torch.no_grad()
def fuse_random_subsets(
    model: DistrEEStudent, vectors: list[list[torch.Tensor]], present: int, seed: int = 0
) -> tuple[ExitRecords, list[tuple[int, ...]], torch.Tensor]:
    """Every sample fused with one subset of ``present`` branches, drawn uniformly at random
    (seeded): the records of requests that ``present`` devices, any of them, answered.

    Returns the records, the subsets (``itertools.combinations`` order) and each sample's
    subset index (N,).
    """
    subsets = list(combinations(range(model.num_branches), present))
    n = vectors[0][0].shape[0]
    which = torch.from_numpy(np.random.default_rng(seed).integers(len(subsets), size=n))
    fused = [fuse_exits(model, vectors, s) for s in subsets]

    def pick(field: int) -> torch.Tensor | None:
        if fused[0][field] is None:
            return None
        out = fused[0][field].clone()
        for i, rec in enumerate(fused[1:], start=1):
            out[:, which == i] = rec[field][:, which == i]
        return out

    return ExitRecords(*(pick(f) for f in range(len(ExitRecords._fields)))), subsets, which


@torch.no_grad()
def fuse_schedule(
    model: DistrEEStudent, vectors: list[list[torch.Tensor]], schedule: Schedule, starts: torch.Tensor
) -> ExitRecords:
    """Every step's outputs (L, N, ...) from precomputed branch vectors, sample i fused
    with the devices awake at that step when it starts on branch ``starts[i]``."""
    schedule.check(model.num_exits, model.num_branches)
    return _fuse_steps(model, vectors, schedule.steps, starts)


@torch.no_grad()
def fuse_awake(
    model: DistrEEStudent, vectors: list[list[torch.Tensor]], awake: int, starts: torch.Tensor
) -> ExitRecords:
    """Every exit's outputs (E, N, ...) with the first ``awake`` devices of each sample's
    wake order (sample i starting on branch ``starts[i]``)."""
    if not 1 <= awake <= model.num_branches:
        raise ValueError(f"awake must be 1 to {model.num_branches}, got {awake}")
    return _fuse_steps(model, vectors, [Step(k, awake) for k in range(model.num_exits)], starts)


def _fuse_steps(
    model: DistrEEStudent, vectors: list[list[torch.Tensor]], steps: Sequence[Step], starts: torch.Tensor
) -> ExitRecords:
    model.eval()
    n = model.num_branches
    head_device = next(model.heads.parameters()).device
    fused: dict[tuple[int, tuple[int, ...]], ExitOutput] = {}
    out = []
    for step in steps:
        parts: list[tuple[torch.Tensor, ExitOutput]] = []
        for s in sorted(set(starts.tolist())):
            keep = awake_branches(step, s, n)
            if (step.exit, keep) not in fused:
                x = [vectors[b][step.exit].to(head_device) if b in keep else None for b in range(n)]
                fused[step.exit, keep] = ExitOutput(
                    *(None if t is None else t.float().cpu() for t in model.heads[step.exit](x))
                )
            parts.append((starts == s, fused[step.exit, keep]))
        out.append(
            ExitOutput(*(_by_sample([(rows, o[f]) for rows, o in parts]) for f in range(len(ExitOutput._fields))))
        )
    return ExitRecords.of(out)


def _by_sample(parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor | None:
    """One tensor whose rows come from the part whose mask holds them."""
    if parts[0][1] is None:
        return None
    out = parts[0][1].clone()
    for rows, t in parts[1:]:
        out[rows] = t[rows]
    return out


def schedule_costs(model: DistrEEStudent, policy: str, schedule: Schedule, starts: torch.Tensor) -> torch.Tensor:
    """MACs (L, N) of stopping at each step of ``schedule`` under ``policy``, sample i
    starting on branch ``starts[i]`` (``ExitCosts.per_step``)."""
    schedule.check(model.num_exits, model.num_branches)
    costs = ExitCosts(model.macs, make_policy(policy))
    table = torch.stack([torch.from_numpy(costs.per_step(schedule, s)) for s in range(model.num_branches)], dim=1)
    return table[:, starts].float()  # (L, N)


def student_exits(
    model: DistrEEStudent,
    images: torch.Tensor,
    norm: Normalization,
    batch_size: int,
    device: torch.device,
    present: Sequence[int] | None = None,
) -> ExitRecords:
    """Every exit's logits and embedding for uint8 images, with the ``present`` branches."""
    return fuse_exits(model, branch_vectors(model, images, norm, batch_size, device), present)


def exit_costs(model: DistrEEStudent, policy: str, present: Sequence[int] | None = None) -> torch.Tensor:
    """MACs (E,) of stopping at each exit under ``policy`` with the ``present`` branches
    (default: all), by the stage loop's cost rule (``ExitCosts``)."""
    # float32, as calibration has always read them (exact sums would move saved figures in the last digits).
    return torch.from_numpy(ExitCosts(model.macs, make_policy(policy)).per_exit(present)).float()
