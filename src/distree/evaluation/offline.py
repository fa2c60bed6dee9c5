"""``distree eval``: accuracy and computation of a trained run on the test split."""

from __future__ import annotations

import csv
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from statistics import mean

import numpy as np
import torch

from distree.data import load_data
from distree.data.dataset import DataSplits, ImageSet
from distree.evaluation.measures import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_DROP_PP,
    accuracy,
    at_targets,
    awake_table,
    branches_present_table,
    calibrate_policies,
    device_schedules,
    evaluate_policy,
    exit_auroc,
    model_thresholds,
    sweep_policy,
)
from distree.evaluation.plots import plot_policy_curves
from distree.evaluation.results import (
    AwakeResult,
    Curves,
    EvalResult,
    Measured,
    PolicyResult,
    PolicyResults,
    RunResult,
    ScheduleResult,
    format_run,
)
from distree.inference.records import branch_vectors, fuse_exits, student_exits, teacher_logits
from distree.models import DistrEEStudent
from distree.models.macs import count_macs
from distree.policies import DEFAULT_POLICY, policy_names
from distree.policies.calibration_file import CalibrationFile, CalibrationTarget
from distree.provenance import Provenance
from distree.run import RunDir


def check_compatible(run: RunDir, data: ImageSet) -> None:
    """Refuse a data set whose image shape or class count differs from the run's."""
    meta = run.meta
    if data.image_shape != (meta.data.in_channels, meta.data.image_size, meta.data.image_size):
        raise ValueError(
            f"the images are {data.image_shape} but {run.path} was trained on "
            f"({meta.data.in_channels}, {meta.data.image_size}, {meta.data.image_size})"
        )
    if len(data.classes) != len(meta.data.classes):
        raise ValueError(f"the data set has {len(data.classes)} classes, the run {len(meta.data.classes)}")


def evaluate_run(
    run: RunDir,
    test: ImageSet,
    device: torch.device,
    batch_size: int = 512,
    vectors: list[list[torch.Tensor]] | None = None,
    student: DistrEEStudent | None = None,
    backend: str = "torch",
) -> RunResult:
    """Teacher, per-exit, full-execution and k-of-N-branches results.

    Computation is MACs per sample (FlopCounterMode FLOPs / 2), cumulative per exit: the
    stages of every branch up to that exit plus every exit head on the way. ``vectors``:
    the test split's branch vectors when already recorded; ``student`` the run's student
    when already loaded; ``backend`` what computed ``vectors``.
    """
    check_compatible(run, test)
    meta = run.meta
    norm = meta.data.normalization
    teacher = run.load_teacher().to(device)
    student = student or run.load_student().to(device)
    x1 = torch.zeros(1, meta.data.in_channels, meta.data.image_size, meta.data.image_size, device=device)
    teacher_macs = count_macs(lambda: teacher(x1))
    t_logits = teacher_logits(teacher, test.images, norm, batch_size, device)
    if vectors is None:
        vectors = branch_vectors(student, test.images, norm, batch_size, device)
    all_exits = fuse_exits(student, vectors)
    exit_acc = accuracy(all_exits.logits, test.labels)
    macs = student.macs
    n = student.num_branches
    devices_present: dict[str, float] = {}
    devices_detail: dict[str, dict[str, float]] = {}
    for k in range(1, n + 1):
        per_subset = {}
        for subset in combinations(range(n), k):
            rec = fuse_exits(student, vectors, subset)
            per_subset[",".join(map(str, subset))] = round(accuracy(rec.logits[-1], test.labels), 4)
        devices_present[str(k)] = round(mean(per_subset.values()), 4)
        devices_detail[str(k)] = per_subset
    return RunResult(
        run=str(run.path),
        test_samples=len(test),
        macs_note="multiply-accumulates per sample = torch.utils.flop_counter FLOPs / 2",
        teacher=Measured(accuracy=round(accuracy(t_logits, test.labels), 4), macs_per_sample=teacher_macs),
        exits=[Measured(accuracy=round(a, 4), macs_per_sample=macs.exit_cumulative(e)) for e, a in enumerate(exit_acc)],
        full=Measured(accuracy=round(exit_acc[-1], 4), macs_per_sample=macs.full()),
        devices_present=devices_present,
        devices_present_subsets=devices_detail,
        stage_macs=macs.stage,
        head_macs=macs.head,
        backend=backend,
        devices_awake={k: AwakeResult(**v) for k, v in awake_table(student, vectors, test.labels).items()},
    )


def export_branch_vectors(
    export_dir: Path, run: RunDir, images: torch.Tensor, batch_size: int
) -> list[list[torch.Tensor]]:
    """Pooled vectors [branch][exit] (N, C) of every branch of an export of ``run``, run
    with onnxruntime; refuses an export of other weights."""
    from distree.export.manifest import read_manifest
    from distree.export.ort import OrtBranch

    manifest = read_manifest(export_dir, run)
    out = []
    for b in range(manifest.num_branches):
        branch = OrtBranch(export_dir, b)
        batches = [branch.pooled(x.numpy()) for x in images.split(batch_size)]  # [batch][exit]
        out.append([torch.from_numpy(np.concatenate(per_exit)) for per_exit in zip(*batches)])
    return out


def fit_calibration(
    run: RunDir,
    student: DistrEEStudent,
    splits: DataSplits,
    device: torch.device,
    target: CalibrationTarget,
    policies: list[str] | None = None,
) -> CalibrationFile:
    """Fit the policies' thresholds (default: every calibrated policy) for ``target`` on the
    validation split."""
    check_compatible(run, splits.val)
    meta = run.meta
    vectors = branch_vectors(student, splits.val.images, meta.data.normalization, meta.config.eval_batch_size, device)
    names = policies or policy_names(calibrated=True)
    return calibrate_policies(student, vectors, splits.val.labels, target, names)


def calibrate_run(
    run: RunDir,
    splits: DataSplits,
    device: torch.device,
    target: CalibrationTarget,
    policies: list[str] | None = None,
) -> CalibrationFile:
    """Fit the policies' thresholds on the validation split and save them in the run."""
    student = run.load_student().to(device)
    cal = fit_calibration(run, student, splits, device, target, policies)
    saved = run.read_calibration()
    if saved is not None and (saved.target, saved.split, saved.samples) == (cal.target, cal.split, cal.samples):
        # Calibrating some policies keeps the others' thresholds for the same target.
        cal = cal.model_copy(update={"policies": saved.policies | cal.policies})
    run.write_calibration(cal)
    return cal


def evaluate_policies(
    run: RunDir,
    splits: DataSplits,
    device: torch.device,
    out_dir: Path | None,
    test_vectors: list[list[torch.Tensor]] | None = None,
    student: DistrEEStudent | None = None,
    val_vectors: list[list[torch.Tensor]] | None = None,
    refit: bool = False,
) -> PolicyResults:
    """Every policy at its calibrated point on the test split, the sweep curves (CSV + PNG
    into ``out_dir``; none when it is None) and the same with k of N branches present.

    A run whose calibration lacks a policy is calibrated here for a 0.5-point drop, in
    memory only: evaluation writes into the run directory only what it is asked to.
    ``refit`` calibrates in memory in any case, for the saved target (vectors from another
    backend than the one the saved thresholds were fitted on).
    """
    check_compatible(run, splits.test)
    student = student or run.load_student().to(device)
    meta = run.meta
    bs, norm = meta.config.eval_batch_size, meta.data.normalization
    val_vec = val_vectors or branch_vectors(student, splits.val.images, norm, bs, device)
    saved = run.read_calibration()
    in_memory = refit or saved is None or any(p not in saved.policies for p in policy_names(calibrated=True))
    if in_memory:
        default = CalibrationTarget(max_drop_pp=DEFAULT_MAX_DROP_PP, confidence=DEFAULT_CONFIDENCE)
        target = saved.target if saved is not None and refit else default
        saved = calibrate_policies(student, val_vec, splits.val.labels, target, policy_names(calibrated=True))
    test_vec = test_vectors or branch_vectors(student, splits.test.images, norm, bs, device)
    val_rec = fuse_exits(student, val_vec)
    test_rec = fuse_exits(student, test_vec)
    y = splits.test.labels
    results = {}
    policies = policy_names()
    for name in policies:
        thresholds = model_thresholds(name, student, saved).at(student.num_branches)
        calibrated = name in saved.policies
        results[name] = PolicyResult(
            **evaluate_policy(student, name, thresholds, test_rec, y),
            auroc=exit_auroc(name, test_rec, y),
            calibration=saved.policies[name] if calibrated else None,
            at_targets=at_targets(student, name, val_rec, splits.val.labels, test_rec, y) if calibrated else None,
        )
    curves = None
    if out_dir is not None:
        rows = [row for p in policies for row in sweep_policy(student, p, val_rec, splits.val.labels, test_rec, y)]
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path, png_path = out_dir / "policy_curves.csv", out_dir / "policy_curves.png"
        with csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["policy", "step", "accuracy", "drop_pp", "macs_per_sample", "saving"])
            w.writeheader()
            w.writerows(rows)
        plot_policy_curves(rows, png_path, f"{run.path.name}: accuracy vs computation (test split)")
        curves = Curves(csv=str(csv_path), png=str(png_path))
    target = saved.target
    schedules = None
    if target.max_drop_pp is not None and target.confidence is not None and student.num_branches > 1:
        found = device_schedules(
            student, DEFAULT_POLICY, val_vec, splits.val.labels, test_vec, y, target.max_drop_pp, target.confidence
        )
        schedules = {name: ScheduleResult(**r) for name, r in found.items()}
    return PolicyResults(
        target=target,
        calibration_saved=not in_memory,
        policies=results,
        branches_present=branches_present_table(student, test_vec, y, saved, policies),
        curves=curves,
        depth_and_devices=schedules,
    )


def record_val_test(run: RunDir, data: str | None, device: torch.device) -> tuple:
    """Load a run's data and record every exit's outputs on its validation and test splits.

    Returns (student, {"val": ExitRecords, "test": ExitRecords}, {"val": labels, "test": labels}).
    """
    meta = run.meta
    splits = load_data(data, None, meta.config.data.val_fraction, meta.config.data.split_seed)
    student = run.load_student().to(device)
    norm, bs = meta.data.normalization, meta.config.eval_batch_size
    recs = {
        k: student_exits(student, s.images, norm, bs, device) for k, s in (("val", splits.val), ("test", splits.test))
    }
    return student, recs, {"val": splits.val.labels, "test": splits.test.labels}


def evaluate(
    run: RunDir,
    splits: DataSplits,
    device: torch.device,
    out_dir: Path | None,
    export: Path | None = None,
    provenance: Provenance | None = None,
    log: Callable[[str], None] = lambda text: None,
) -> EvalResult:
    """``distree eval``: the run's results (``evaluate_run``; ``log`` gets their table as soon
    as they are measured), then every policy's (``evaluate_policies``). With ``export`` the
    branches run in onnxruntime on that export, and the thresholds are fitted again on its
    validation vectors."""
    check_compatible(run, splits.test)
    bs = run.meta.config.eval_batch_size
    student = run.load_student().to(device)
    # The branch vectors of each split serve every table: computed once.
    if export is None:
        backend, val_vectors = "torch", None
        vectors = branch_vectors(student, splits.test.images, run.meta.data.normalization, bs, device)
    else:
        from distree.export.manifest import read_manifest

        backend = f"onnxruntime {read_manifest(export).precision} ({export})"
        vectors = export_branch_vectors(export, run, splits.test.images, bs)
        val_vectors = export_branch_vectors(export, run, splits.val.images, bs)
    measured = evaluate_run(run, splits.test, device, bs, vectors, student, backend=backend)
    log(format_run(measured))
    policies = evaluate_policies(
        run, splits, device, out_dir, vectors, student, val_vectors=val_vectors, refit=val_vectors is not None
    )
    return EvalResult(**dict(measured), **dict(policies), provenance=provenance)
