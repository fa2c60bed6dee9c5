"""A trained model in this process: ``distree.load(PATH).infer(images)``.

The same stage loop, policy and thresholds as the coordinator, every branch run here in
turn (``run_in_turn``); images as they come (``distree.images``). A run directory runs in
PyTorch (``LocalModel.from_run``); an export directory in onnxruntime, with no torch
(``distree.export.ort.load_export``): this module imports neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distree.answer import Answer
from distree.exits import StudentMacs
from distree.images import ImageLike, as_model_input
from distree.inference.costs import ExitCosts
from distree.inference.stage_loop import Fusion, StageLoop, StageRunner, run_in_turn
from distree.policies import DEFAULT_POLICY, ExitPolicy, make_policy
from distree.policies.calibration_file import CalibrationFile, thresholds_for
from distree.policies.scores import softmax


@dataclass(frozen=True)
class ModelParts:
    """What a model run in one process is made of, whichever backend computes it."""

    branches: Sequence[StageRunner]
    fusion: Fusion  # the exit heads
    macs: StudentMacs
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W) of the uint8 images stage 0 takes
    calibration: CalibrationFile | None
    #: uint8 images (B, C, H, W) numpy -> what stage 0 takes (the torch model normalises
    #: them first; an export's first stage does that itself).
    prepare: Callable[[np.ndarray], Any] = lambda x: x
    #: Entered around a batch (torch: no autograd).
    context: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext)


class LocalModel:
    """A trained model with a calibrated exit policy, run in this process."""

    def __init__(self, parts: ModelParts, policy: str = DEFAULT_POLICY):
        self.parts = parts
        self.classes = list(parts.classes)
        self.input_shape = parts.input_shape
        self.num_branches = len(parts.branches)
        self.num_exits = len(parts.macs.head)
        self.policy: ExitPolicy = make_policy(policy)
        if not self.policy.servable:
            raise ValueError(f"the {policy} policy reads the labels; it exists for offline evaluation only")
        self.thresholds = thresholds_for(
            self.policy, parts.calibration, branches=self.num_branches, exits=self.num_exits
        )

    @classmethod
    def from_run(cls, run_dir: str | Path, policy: str = DEFAULT_POLICY) -> LocalModel:
        """A run directory's student, in PyTorch on the CPU."""
        import torch

        from distree.models import HeadFusion
        from distree.run import RunDir

        run = RunDir(run_dir)
        meta = run.meta
        student = run.load_student().eval()
        norm = meta.data.normalization
        parts = ModelParts(
            branches=student.branches,
            fusion=HeadFusion(student.heads),
            macs=student.macs,
            classes=list(meta.data.classes),
            input_shape=(meta.data.in_channels, meta.data.image_size, meta.data.image_size),
            calibration=run.read_calibration(),
            prepare=lambda x: norm(torch.from_numpy(x)).contiguous(memory_format=torch.channels_last),
            context=torch.no_grad,
        )
        return cls(parts, policy)

    def infer(self, images: ImageLike | Sequence[ImageLike], batch: int = 256) -> list[Answer]:
        """Classify images as they come (paths, bytes, PIL images, uint8 arrays of any size),
        converted to the model's size and channels; one Answer per image, as a cluster
        gives it (without its timings)."""
        x = as_model_input(images, self.input_shape)
        p = self.parts
        out = []
        for start in range(0, len(x), batch):
            part = x[start : start + batch]
            loop = StageLoop(
                p.fusion,
                self.policy,
                self.thresholds,
                ExitCosts(p.macs, self.policy),
                len(part),
                num_exits=self.num_exits,
            )
            with p.context():
                e = run_in_turn(loop, p.branches, p.prepare(part))
            probs = softmax(e.logits).tolist()
            for r, c in enumerate(e.predictions.tolist()):
                out.append(
                    Answer(
                        prediction=c,
                        probabilities=probs[r],
                        exit=int(e.exit[r]),
                        macs=int(e.macs[r]),
                        class_name=self.classes[c],
                        branches=list(e.branches[r]),
                        stop_reason=e.reason[r].value,
                    )
                )
        return out
