"""``distree train``: the teacher, then the student, into one run directory."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from distree.config import RunConfig
from distree.data.augment import Normalization
from distree.data.dataset import DataSplits
from distree.evaluation.measures import accuracy
from distree.hardware import resolved_precision
from distree.inference.records import student_exits, teacher_logits
from distree.provenance import Provenance
from distree.run import DataInfo, RunDir, RunMeta
from distree.training.checkpoint import progress_file
from distree.training.distributed import SINGLE, Ranks
from distree.training.loop import Phase, TimeLimitReached, train_phase
from distree.training.objectives import StudentObjective, TeacherObjective, TeacherTargets, ViewTable
from distree.weights import load_weights

#: The teacher's outputs on the student's views, kept beside the resume state while the
#: student trains (too large to commit; see ``TeacherTargets``).
TEACHER_TARGETS_FILE = "teacher-targets.safetensors"
#: Training images a teacher's data-dependent initialisation sees (the whitening layer's
#: patch statistics settle well before this).
WHITEN_SAMPLE = 5000


def init_sample(images: torch.Tensor, seed: int, n: int = WHITEN_SAMPLE) -> torch.Tensor:
    """``n`` of ``images`` (N, ...) drawn at random with ``seed``, in their order.

    Drawn, not the first ``n``: the training split keeps the image folder's order, class
    after class, so its first 5,000 CIFAR-10 images are nine tenths airplanes, and a
    whitening layer fitted to them mis-scales every other class's patches.
    """
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[pick.sort().values]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunExistsError(RuntimeError):
    """The output directory already holds a different or a finished run."""


def _prepare(
    run: RunDir, config: RunConfig, splits: DataSplits, teacher_from: Path | None, provenance: Provenance | None
) -> RunMeta:
    """Write run.json for a new run, or check that an existing one is the same run."""
    if run.meta_file.is_file():
        old = run.read_meta()
        if old.config != config:
            raise RunExistsError(
                f"{run.path} holds a run with a different configuration; use another --out "
                "(resuming needs the same config and options)"
            )
        return old
    if run.path.exists() and any(run.path.iterdir()):
        raise RunExistsError(f"{run.path} exists and is not empty; use another --out")
    norm = Normalization.fit(splits.train.images)
    meta = RunMeta(
        config=config,
        data=DataInfo(
            in_channels=splits.in_channels,
            image_size=splits.image_size,
            classes=splits.train.classes,
            mean=norm.mean,
            std=norm.std,
            format=splits.format,
            source=splits.source,
            train_samples=len(splits.train),
        ),
        teacher_from=str(teacher_from) if teacher_from else None,
        provenance=provenance,
    )
    run.write_meta(meta)
    return meta


def train_run(
    out: Path,
    splits: DataSplits,
    config: RunConfig,
    device: torch.device,
    teacher_from: Path | None = None,
    log: Callable[[str], None] = print,
    time_limit: float | None = None,
    provenance: Provenance | None = None,
    ranks: Ranks = SINGLE,
    teacher_only: bool = False,
) -> RunDir:
    """Train (or resume) the teacher and the student of one run; returns the run directory.

    ``time_limit`` (seconds from now): stop cleanly with ``TimeLimitReached`` at the last
    epoch boundary that fits; the same call on the same directory then continues.

    ``teacher_only``: stop once the teacher is trained; the same call without it continues
    with the student.

    ``ranks``: every rank of a data-parallel run calls this with the same arguments; rank
    0 writes the run directory and hands the others what they need from it, so that they
    need not see the same file system (``training.distributed``).
    """
    run = RunDir(out)
    ranks.check_same(configuration=config.model_dump(mode="json"), data=splits.train.labels)
    ranks.check_same(images=splits.train.images)
    prepared = _prepare(run, config, splits, teacher_from, provenance) if ranks.is_main else None
    meta = ranks.from_main(prepared)
    if ranks.from_main(run.student_file.is_file()):
        raise RunExistsError(f"{run.path} is a finished run; evaluate it or use another --out")
    norm = meta.data.normalization
    deadline = None if time_limit is None else time.monotonic() + time_limit
    torch.manual_seed(config.seed)
    val = splits.val
    common = {
        "train": splits.train,
        "norm": norm,
        "data_cfg": config.data,
        "seed": config.seed,
        "device": device,
        "resume_dir": run.resume_dir,
        "metrics_file": run.metrics_file,
        "log": log,
        "deadline": deadline,
        "ranks": ranks,
    }

    teacher = run.build_teacher(meta)
    if ranks.is_main and teacher_from is not None and not run.teacher_file.is_file():
        src = RunDir(teacher_from)
        src_meta = src.read_meta()
        if src_meta.config.teacher != config.teacher or src_meta.data.classes != meta.data.classes:
            raise RunExistsError(f"the teacher in {teacher_from} has another architecture or classes than this run")
        shutil.copyfile(src.teacher_file, run.teacher_file)
        log(f"teacher: taken from {teacher_from}")
    if ranks.from_main(run.teacher_file.is_file()):
        if ranks.is_main:
            load_weights(teacher, run.teacher_file)
        ranks.load_from_main(teacher)
    else:

        def validate_teacher() -> dict[str, object]:
            logits = teacher_logits(teacher, val.images, norm, config.eval_batch_size, device)
            return {"accuracy": round(accuracy(logits, val.labels), 4)}

        if ranks.is_main and not progress_file(run.resume_dir, "teacher").is_file():
            teacher.init_from_data(norm(init_sample(splits.train.images, config.seed)))
        objective = TeacherObjective(teacher, config.teacher_optim.label_smoothing)
        phase = Phase("teacher", objective, config.teacher_optim, validate_teacher)
        train_phase(phase, final_weights=run.teacher_file, **common)
    teacher.to(device).eval()
    if teacher_only:
        return run

    torch.manual_seed(config.seed + 1)
    student = run.build_student(meta)
    if ranks.is_main and not progress_file(run.resume_dir, "student").is_file():
        student.init_from_data(norm(init_sample(splits.train.images, config.seed + 1)))

    def validate_student() -> dict[str, object]:
        rec = student_exits(student, val.images, norm, config.eval_batch_size, device)
        return {"exit_accuracy": [round(a, 4) for a in accuracy(rec.logits, val.labels)]}

    targets = None
    if deadline is not None and ranks.any(time.monotonic() > deadline):
        raise TimeLimitReached("stopped after the teacher phase at the time limit; the student phase is next")
    table = None
    if config.data.crop_padding == 0 or config.distill.teacher_views:
        d = config.data
        table = ViewTable(
            len(splits.train), d.crop_padding, d.flip, config.distill.teacher_views, config.seed, d.pad_mode
        )
        store = run.resume_dir / TEACHER_TARGETS_FILE
        precision = resolved_precision(device, config.student_optim.precision)
        key = (
            f"{ranks.from_main(_sha256(run.teacher_file) if ranks.is_main else None)}:{len(splits.train)}:{d.crop_padding}:{d.flip}:{table.per_image}:{config.seed}"
            + ("" if d.pad_mode == "zeros" else f":{d.pad_mode}")
            # Keys of fp32 outputs are as they were before precision was a setting.
            + ("" if precision == "fp32" else f":{precision}")
        )
        targets = TeacherTargets(
            teacher,
            splits.train.images,
            norm,
            table,
            config.eval_batch_size,
            device,
            log,
            precision=precision,
            # Each rank computes them (a matter of seconds on a GPU); rank 0 keeps them.
            store=store if ranks.is_main else None,
            key=key,
            # Decided by each rank alone, a deadline here could stop one rank and not the
            # others: with several ranks (seconds of work on GPUs) the time limit waits.
            deadline=deadline if ranks.world == 1 else None,
        )
    objective = StudentObjective(student, teacher, config.distill, targets, config.student_optim.label_smoothing)
    phase = Phase("student", objective, config.student_optim, validate_student, views=table)
    train_phase(phase, final_weights=run.student_file, **common)
    if ranks.is_main:
        (run.resume_dir / TEACHER_TARGETS_FILE).unlink(missing_ok=True)
        if run.resume_dir.is_dir() and not any(run.resume_dir.iterdir()):
            run.resume_dir.rmdir()
    return run
