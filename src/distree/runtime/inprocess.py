"""The same model and policy as the distributed runtime, run in one process.

The reference the runtime benchmark compares against: stage by stage, every branch in
turn, fusing and deciding after each stage, with inputs that exited dropped from the
batch (so computation stops as it does on the devices).
"""

from __future__ import annotations

import torch

from distree.data.augment import Normalization
from distree.models import DistrEEStudent
from distree.policies import ExitPolicy


@torch.no_grad()
def early_exit_batch(
    model: DistrEEStudent, policy: ExitPolicy, thresholds: list[float], images: torch.Tensor, norm: Normalization
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, C, H, W) -> (predictions (B,), exit indices (B,))."""
    model.eval()
    b = images.shape[0]
    preds = torch.empty(b, dtype=torch.long)
    exits = torch.empty(b, dtype=torch.long)
    alive = torch.arange(b)
    x = norm(images).contiguous(memory_format=torch.channels_last)
    state = [x] * model.num_branches
    logits: list[torch.Tensor] = []
    embeddings: list[torch.Tensor] = []
    for k in range(model.num_exits):
        vectors = []
        for i, branch in enumerate(model.branches):
            state[i], v = branch.run_stage(k, state[i])
            vectors.append(v)
        out = model.heads[k](vectors)
        logits.append(out.logits)
        embeddings.append(out.embedding)
        stop = policy.should_exit(k, logits, embeddings, thresholds)
        preds[alive[stop]] = out.logits[stop].argmax(-1)
        exits[alive[stop]] = k
        keep = ~stop
        if not keep.any():
            break
        alive = alive[keep]
        state = [s[keep] for s in state]
        logits = [t[keep] for t in logits]
        embeddings = [t[keep] for t in embeddings]
    return preds, exits
