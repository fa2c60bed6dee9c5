"""Exit heads on a frozen teacher: the single-device early-exit network the simulator compares with.

The teacher is a plain network of blocks; an early-exit version of it on one device gets a small
head (LayerNorm + Linear on the globally averaged block output) after some residual blocks.
The teacher's own classifier is the last exit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distree.models.macs import count_macs
from distree.models.teacher import Teacher


def teacher_segments(teacher: Teacher, x: torch.Tensor, exit_points: Sequence[int]) -> list[torch.Tensor]:
    """Block outputs (B, C, H, W) after blocks[:end] for each ``end`` (increasing), one pass."""
    out, h, done = [], teacher.stem(x), 0
    for end in exit_points:
        h = teacher.blocks[done:end](h)
        done = end
        out.append(h)
    return out


class TeacherExits(nn.Module):
    """Heads after the teacher's blocks ``exit_points`` (each a block count, excluding the last).

    forward: pooled block outputs [(B, C_i)] -> logits [(B, K)], one per head.
    """

    def __init__(self, teacher: Teacher, exit_points: Sequence[int], num_classes: int):
        super().__init__()
        total = len(teacher.blocks)
        if any(not 1 <= b < total for b in exit_points) or sorted(set(exit_points)) != list(exit_points):
            raise ValueError(f"exit_points must be increasing block counts in 1..{total - 1}, got {list(exit_points)}")
        self.exit_points = list(exit_points)
        dims = [teacher.block_channels[b - 1] for b in self.exit_points]
        self.heads = nn.ModuleList(nn.Sequential(nn.LayerNorm(c), nn.Linear(c, num_classes)) for c in dims)

    def forward(self, pooled: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Pooled features per head -> logits per head."""
        return [head(v) for head, v in zip(self.heads, pooled, strict=True)]

    @torch.no_grad()
    def pooled(self, teacher: Teacher, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) normalised input -> pooled features (B, C_i) at each head."""
        return [h.mean(dim=(2, 3)) for h in teacher_segments(teacher, x, self.exit_points)]

    @torch.no_grad()
    def all_logits(self, teacher: Teacher, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) normalised input -> logits (B, K) of every head, then the teacher's
        own, from one pass through the teacher."""
        maps = teacher_segments(teacher, x, [*self.exit_points, len(teacher.blocks)])
        heads = self([h.mean(dim=(2, 3)) for h in maps[:-1]])
        return [*heads, teacher.fc(teacher.tap(maps[-1]))]

    def head_macs(self) -> list[int]:
        """MACs per sample of each head."""
        return [count_macs(lambda h=h: h(torch.zeros(1, h[0].normalized_shape[0]))) for h in self.heads]


@torch.no_grad()
def teacher_block_costs(teacher: Teacher, in_channels: int, image_size: int) -> tuple[list[int], list[int]]:
    """Per-sample (MACs, output bytes as float32) of each block; the stem is counted in the
    first block and the pooled classifier in the last, so the lists sum to the whole teacher."""
    was_training = teacher.training
    teacher.eval()
    try:
        x = torch.zeros(1, in_channels, image_size, image_size)
        h = teacher.stem(x)
        macs, out_bytes = [], []
        for block in teacher.blocks:
            macs.append(count_macs(lambda b=block, inp=h: b(inp)))
            h = block(h)
            out_bytes.append(h.numel() * 4)
        macs[0] += count_macs(lambda: teacher.stem(x))
        macs[-1] += count_macs(lambda: teacher.fc(teacher.tap(h)))
    finally:
        teacher.train(was_training)
    return macs, out_bytes
