"""``distree record``: run a trained model once over the test split and write the
simulator's trace (``simulation/trace.py``), fitting the single-device baseline's exit
heads on the way."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from distree.data import ENV_VAR
from distree.data.loading import load_data
from distree.inference.recorded import branch_vectors
from distree.models import ExitRecords
from distree.models.probes import TeacherExits, teacher_block_costs
from distree.policies import exit_scores
from distree.policies.calibration import calibrate
from distree.policies.scores import MaxProb
from distree.run import RunDir
from distree.simulation.engine import Model
from distree.simulation.trace import TRACE_FILE, Trace, TraceMeta
from distree.training.probes import fit_teacher_exits, pooled_features

#: Training samples used to fit the baseline's exit heads: enough for linear heads, quick on a CPU.
PROBE_TRAIN_SAMPLES = 10_000


def baseline_exit_points(run: RunDir) -> list[int]:
    """The single-device baseline's exits: the end of every residual group but the last."""
    per_group = run.meta.config.teacher.blocks_per_group
    return [per_group, 2 * per_group]


def record_trace(
    run: RunDir,
    data: str | None,
    device: torch.device,
    max_drop_pp: float = 0.5,
    log: Callable[[str], None] = print,
) -> Trace:
    """Run the model once over the test split and return the trace (also written to RUN_DIR)."""
    meta = run.meta
    cfg = meta.config
    splits = load_data(data, None, cfg.data.val_fraction, cfg.data.split_seed)
    norm, bs = meta.data.normalization, cfg.eval_batch_size
    student = run.load_student().to(device)
    teacher = run.load_teacher().eval()
    k = len(meta.data.classes)

    log("recording every branch's pooled vectors on the test split")
    vectors = branch_vectors(student, splits.test.images, norm, bs, device)

    log("fitting the single-device baseline's exit heads on the frozen teacher")
    exits = TeacherExits(teacher, baseline_exit_points(run), k)
    train = splits.train.images[:PROBE_TRAIN_SAMPLES]
    fit_teacher_exits(
        exits, pooled_features(exits, teacher, train, norm, bs), splits.train.labels[:PROBE_TRAIN_SAMPLES]
    )

    def baseline_logits(images: torch.Tensor) -> torch.Tensor:
        """(G, N, K): every exit of the baseline, one teacher pass per batch."""
        parts = [exits.all_logits(teacher, norm(images[i : i + bs])) for i in range(0, len(images), bs)]
        return torch.stack([torch.cat(per_exit) for per_exit in zip(*parts, strict=True)])

    block_macs, block_bytes = teacher_block_costs(teacher, meta.data.in_channels, meta.data.image_size)
    exit_points = [*exits.exit_points, len(block_macs)]
    exit_macs = [*exits.head_macs(), 0]
    cumulative = torch.tensor(
        [float(sum(block_macs[:end]) + sum(exit_macs[: i + 1])) for i, end in enumerate(exit_points)]
    )

    val_logits = baseline_logits(splits.val.images)
    scores = exit_scores(MaxProb(), ExitRecords(val_logits))
    fitted = calibrate(
        scores, val_logits.argmax(-1) == splits.val.labels, cumulative, float(cumulative[-1]), max_drop_pp=max_drop_pp
    )
    log(f"baseline exits calibrated on validation: {fitted.message}")

    macs = student.macs
    trace = Trace(
        labels=splits.test.labels.clone(),
        vectors=vectors,
        teacher_exit_logits=baseline_logits(splits.test.images),
        meta=TraceMeta(
            samples=len(splits.test),
            num_classes=k,
            input_bytes=meta.data.in_channels * meta.data.image_size**2,
            stage_macs=macs.stage,
            head_macs=macs.head,
            vector_bytes=[[v.shape[1] * 4 for v in per] for per in vectors],
            teacher_block_macs=block_macs,
            teacher_block_bytes=block_bytes,
            teacher_exit_points=exit_points,
            teacher_exit_macs=exit_macs,
            teacher_exit_thresholds=fitted.thresholds,
            source=splits.source,
        ),
    )
    trace.save(run.path / TRACE_FILE)
    return trace


def load_model(run: RunDir, data: str | None, device: torch.device, log: Callable[[str], None] = print) -> Model:
    """The run's model with its trace, recording the trace first when there is none."""
    path = run.path / TRACE_FILE
    if not path.is_file() and data is None and not os.environ.get(ENV_VAR):
        raise FileNotFoundError(
            f"{run.path} has no recorded trace ({TRACE_FILE}); run 'distree record {run.path} --data PATH', "
            f"or pass --data (or set {ENV_VAR}) and it is recorded first"
        )
    trace = Trace.load(path) if path.is_file() else record_trace(run, data, device, log=log)
    return Model.from_run(run, trace)
