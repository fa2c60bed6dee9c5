"""The same model and policy as the distributed runtime, run in one process.

The reference the runtime benchmark compares against: stage by stage, every branch in
turn, fusing and deciding after each stage, with inputs that exited dropped from the
batch (so computation stops as it does on the devices).
"""

from __future__ import annotations

import torch

from distree.data.augment import Normalization
from distree.models import DistrEEStudent
from distree.policies import ExitPolicy, ExitThresholds
from distree.runtime.exit_loop import ExitLoop


@torch.no_grad()
def early_exit_batch(
    model: DistrEEStudent, policy: ExitPolicy, thresholds: ExitThresholds, images: torch.Tensor, norm: Normalization
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, C, H, W) -> (predictions (B,), exit indices (B,))."""
    model.eval()
    loop = ExitLoop(model.heads, policy, thresholds, images.shape[0])
    x = norm(images).contiguous(memory_format=torch.channels_last)
    state = [x] * model.num_branches
    for k in range(model.num_exits):
        vectors = []
        for i, branch in enumerate(model.branches):
            state[i], v = branch.run_stage(k, state[i])
            vectors.append(v)
        keep = loop.step(k, vectors)
        if loop.done:
            break
        state = [s[keep] for s in state]
    return loop.predictions(), loop.exit
