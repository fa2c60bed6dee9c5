"""A trained run in this process: ``distree.load(RUN_DIR).infer(images)``.

The same stage loop, policy and thresholds as the coordinator (``early_exit_batch``),
every branch run here in turn; images as they come (``distree.images``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from distree.answer import Answer
from distree.images import ImageLike, as_model_input
from distree.inference.inprocess import early_exit_batch
from distree.policies import DEFAULT_POLICY, make_policy
from distree.policies.calibration_file import model_thresholds
from distree.run import RunDir


class LocalModel:
    """A run's student with a calibrated exit policy, run in this process."""

    def __init__(self, run_dir: str | Path, policy: str = DEFAULT_POLICY):
        self.run = RunDir(run_dir)
        meta = self.run.meta
        self.classes = list(meta.data.classes)
        self.input_shape = (meta.data.in_channels, meta.data.image_size, meta.data.image_size)
        self.student = self.run.load_student()
        self.policy = make_policy(policy)
        if not self.policy.servable:
            raise ValueError(f"the {policy} policy reads the labels; it exists for offline evaluation only")
        self.thresholds = model_thresholds(self.policy, self.student, self.run.read_calibration())
        self._norm = meta.data.normalization

    def infer(self, images: ImageLike | Sequence[ImageLike], batch: int = 256) -> list[Answer]:
        """Classify images as they come (paths, bytes, PIL images, uint8 arrays of any size),
        converted to the model's size and channels; one Answer per image, as a cluster
        gives it (without its timings)."""
        x = torch.from_numpy(as_model_input(images, self.input_shape))
        out = []
        for part in x.split(batch):
            e = early_exit_batch(self.student, self.policy, self.thresholds, part, self._norm)
            probs = e.logits.softmax(-1).tolist()
            for r, p in enumerate(e.predictions.tolist()):
                out.append(
                    Answer(
                        prediction=p,
                        probabilities=probs[r],
                        exit=int(e.exit[r]),
                        macs=int(e.macs[r]),
                        class_name=self.classes[p],
                        branches=list(e.branches[r]),
                        stop_reason=e.reason[r].value,
                    )
                )
        return out
