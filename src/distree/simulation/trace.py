"""Recorded model outputs the simulator replays: every test sample's real exit outputs.

``distree record`` (``record_trace``, below) runs the trained model once over the test
split and stores, per sample,
the pooled vector of every branch at every exit (the simulator fuses whichever branches a
simulated request got, with the run's real exit heads), the single-device early-exit
baseline's logits at each of its exits, and the costs and message sizes of every piece.
Simulated accuracy is therefore the model's real accuracy on those samples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import save_file

from distree.data.loading import load_data
from distree.evaluation.probes import fit_teacher_exits, pooled_features
from distree.inference.records import branch_vectors
from distree.models import ExitRecords
from distree.models.probes import TeacherExits, teacher_block_costs
from distree.policies import exit_scores
from distree.policies.calibration import calibrate
from distree.policies.scores import MaxProb
from distree.run import RunDir

TRACE_FILE = "trace.safetensors"


class TraceMeta(BaseModel):
    """Costs (MACs per sample) and sizes (bytes) of everything a simulated request does."""

    # "Infinity" round-trips an exit that never stops (a calibration that could not be met).
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")
    samples: int
    num_classes: int
    input_bytes: int  # one uint8 image, as the runtime sends it
    stage_macs: list[list[int]]  # [branch][stage]
    head_macs: list[int]  # [exit], all branches present
    vector_bytes: list[list[int]]  # [branch][exit]: one float32 pooled vector
    teacher_block_macs: list[int]  # stem counted in block 0, classifier in the last block
    teacher_block_bytes: list[int]  # float32 activation after each block
    # The baseline's exit points: block counts after which its exits sit (the last = all).
    # Traces recorded before the name was unified call it teacher_exit_blocks.
    teacher_exit_points: list[int] = Field(validation_alias=AliasChoices("teacher_exit_points", "teacher_exit_blocks"))
    teacher_exit_macs: list[int]  # per exit head (the last is the teacher's own classifier: 0 extra)
    teacher_exit_thresholds: list[float]  # max-prob, calibrated on validation
    source: str


@dataclass
class Trace:
    """Labels (N,), branch vectors [branch][exit] (N, C), baseline logits (G, N, K), costs."""

    labels: torch.Tensor
    vectors: list[list[torch.Tensor]]
    teacher_exit_logits: torch.Tensor
    meta: TraceMeta

    @property
    def teacher_logits(self) -> torch.Tensor:
        """The teacher's own logits (N, K): its last exit."""
        return self.teacher_exit_logits[-1]

    def save(self, path: Path) -> None:
        """Write one safetensors file; the costs go in its metadata as JSON."""
        tensors = {"labels": self.labels, "teacher_exit_logits": self.teacher_exit_logits.contiguous()}
        for b, per_exit in enumerate(self.vectors):
            for e, v in enumerate(per_exit):
                tensors[f"vector.{b}.{e}"] = v.contiguous()
        save_file(tensors, str(path), metadata={"meta": self.meta.model_dump_json()})

    @classmethod
    def load(cls, path: Path) -> Trace:
        """Read a file written by ``save``."""
        if not path.is_file():
            raise FileNotFoundError(f"no trace at {path}; run 'distree record RUN_DIR --data PATH' first")
        with safe_open(str(path), framework="pt") as f:
            meta = TraceMeta.model_validate(json.loads(f.metadata()["meta"]))
            n_b, n_e = len(meta.stage_macs), len(meta.head_macs)
            vectors = [[f.get_tensor(f"vector.{b}.{e}") for e in range(n_e)] for b in range(n_b)]
            return cls(f.get_tensor("labels"), vectors, f.get_tensor("teacher_exit_logits"), meta)

    def subset(self, n: int) -> Trace:
        """The first ``n`` samples (for quick runs)."""
        return Trace(
            self.labels[:n],
            [[v[:n] for v in per] for per in self.vectors],
            self.teacher_exit_logits[:, :n],
            self.meta.model_copy(update={"samples": min(n, self.meta.samples)}),
        )


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
