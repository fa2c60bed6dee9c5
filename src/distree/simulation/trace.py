"""Recorded model outputs the simulator replays: every test sample's real exit outputs.

``distree record`` (``evaluation/record.py``) runs the trained model once over the test
split and stores, per sample,
the pooled vector of every branch at every exit (the simulator fuses whichever branches a
simulated request got, with the run's real exit heads), the single-device early-exit
baseline's logits at each of its exits, and the costs and message sizes of every piece.
Simulated accuracy is therefore the model's real accuracy on those samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import save_file

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
