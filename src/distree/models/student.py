"""The DistrEE student: N parallel branches plus one fused exit head per exit point."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import nn

from distree.config import StudentConfig
from distree.exits import ExitOutput, StudentMacs
from distree.models.branch import Branch
from distree.models.heads import ExitHead
from distree.models.macs import count_macs


class DistrEEStudent(nn.Module):
    """Input (B, C, H, W) -> one ExitOutput per exit (embedding (B, D), logits (B, K))."""

    def __init__(self, config: StudentConfig, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        self.image_size = image_size
        exits = config.exit_points
        self.branches = nn.ModuleList(Branch(b, exits, in_channels) for b in config.branches)
        self.heads = nn.ModuleList(
            ExitHead([br.out_dims[e] for br in self.branches], config.embed_dim, num_classes) for e in range(len(exits))
        )

    def init_from_data(self, x: torch.Tensor) -> None:
        """Every branch's data-dependent initialisation, from normalised training images
        (N, C, H, W)."""
        for branch in self.branches:
            branch.init_from_data(x)

    @property
    def num_branches(self) -> int:
        """N, the number of branches (devices)."""
        return len(self.branches)

    @property
    def num_exits(self) -> int:
        """Number of exit points (= stages per branch)."""
        return len(self.heads)

    def forward(
        self,
        x: torch.Tensor,
        present: Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
    ) -> list[ExitOutput]:
        """Run the present branches stage by stage and fuse at every exit.

        ``present`` lists the branches that run at all (default: all); ``mask`` (B, N)
        bool additionally drops branches per sample, as branch drop-out does in training.
        """
        return self.run_exits(x, present, mask)[0]

    def run_exits(
        self,
        x: torch.Tensor,
        present: Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
        agreement: bool = True,
    ) -> tuple[list[ExitOutput], list[list[torch.Tensor | None]]]:
        """``forward``, also returning the branch vectors [exit][branch] (B, d_b) it fused
        (None for a branch that did not run); ``agreement=False`` skips the heads' agreement."""
        run = range(self.num_branches) if present is None else sorted(present)
        state: dict[int, torch.Tensor] = dict.fromkeys(run, x)
        outputs, fused = [], []
        for k in range(self.num_exits):
            vectors: list[torch.Tensor | None] = [None] * self.num_branches
            for b in run:
                state[b], vectors[b] = self.branches[b].run_stage(k, state[b])
            outputs.append(self.heads[k](vectors, mask, agreement))
            fused.append(vectors)
        return outputs, fused

    @cached_property
    def macs(self) -> StudentMacs:
        """Per-sample MACs of every stage and head, counted once on a dummy input."""
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            x = torch.zeros(1, self.in_channels, self.image_size, self.image_size, device=p.device, dtype=p.dtype)
            stage = [br.stage_macs(x) for br in self.branches]
            with torch.no_grad():
                pooled = [br(x) for br in self.branches]
            head = [count_macs(lambda h=h, e=e: h([v[e] for v in pooled])) for e, h in enumerate(self.heads)]
        finally:
            self.train(was_training)
        return StudentMacs(stage, head)
