"""The torch backend of a worker: one branch of a run's student, on the run's weights."""

from __future__ import annotations

import numpy as np
import torch

from distree.models import Branch
from distree.run import RunDir
from distree.weights import load_weights


class TorchStages:
    """``StageBackend`` on torch: stage 0 normalises the images as training did; the state
    stays on ``device``, channels-last."""

    def __init__(self, run: RunDir, branch: int, device: torch.device, threads: int | None = None):
        """``threads``: torch's intra-op threads in this process (default: torch's choice)."""
        meta = run.meta
        n = len(meta.config.student.branches)
        if not 0 <= branch < n:
            raise ValueError(f"--branch must be in 0..{n - 1} for {run.path}, got {branch}")
        self.run_dir, self.branch, self.device = run, branch, device
        if threads:
            torch.set_num_threads(threads)
        self.norm = meta.data.normalization
        self.input_shape = (meta.data.in_channels, meta.data.image_size, meta.data.image_size)
        self.model = Branch(
            meta.config.student.branches[branch], meta.config.student.exit_points, meta.data.in_channels
        )
        self.num_stages = self.model.num_stages
        self.stage_macs: list[int] = []
        # Read now (the branch's tensors in full), so that weights that cannot be read fail
        # before the server starts.
        self.fingerprint = run.branch_fingerprint(branch)
        self.description = f"torch {device}"

    def load(self) -> None:
        """Load this branch's weights (only its own) and count every stage's MACs."""
        load_weights(self.model, self.run_dir.student_file, prefix=f"branches.{self.branch}.")
        self.model.eval().to(self.device, memory_format=torch.channels_last)
        with torch.no_grad():
            h = self.norm(torch.zeros((1, *self.input_shape), dtype=torch.uint8, device=self.device))
            self.stage_macs = self.model.stage_macs(h.contiguous(memory_format=torch.channels_last))

    def as_input(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images)

    @torch.no_grad()
    def compute(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        x = x.to(self.device)
        if k == 0:
            x = self.norm(x)
        h, v = self.model.run_stage(k, x.contiguous(memory_format=torch.channels_last))
        return h, v.float().cpu().numpy()

    def cat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts)

    def split(self, x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        return list(x.split(sizes))
