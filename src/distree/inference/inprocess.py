"""The in-process executor: the same model, policy and stage loop as the distributed
runtime, every branch run in turn in one process.

The reference the runtime benchmark compares against: stage by stage, fusing and deciding
after each stage, with inputs that exited dropped from the batch (so computation stops as
it does on the devices).
"""

from __future__ import annotations

import torch

from distree.data.augment import Normalization
from distree.inference.costs import ExitCosts
from distree.inference.stage_loop import Exited, StageLoop, run_in_turn
from distree.models import DistrEEStudent, HeadFusion
from distree.policies import ExitPolicy, ExitThresholds


@torch.no_grad()
def early_exit_batch(
    model: DistrEEStudent,
    policy: ExitPolicy,
    thresholds: ExitThresholds,
    images: torch.Tensor,
    norm: Normalization,
    start: int = 0,
) -> Exited:
    """uint8 images (B, C, H, W) -> every input's exit, logits and cost; under a schedule
    (``thresholds.schedule``) every input starts on branch ``start``."""
    model.eval()
    loop = StageLoop(
        HeadFusion(model.heads),
        policy,
        thresholds,
        ExitCosts(model.macs, policy),
        images.shape[0],
        num_exits=model.num_exits,
        start=start,
    )
    return run_in_turn(loop, model.branches, norm(images).contiguous(memory_format=torch.channels_last))
