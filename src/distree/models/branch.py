"""One student branch: a small network of blocks that runs one stage at a time on its device."""

from __future__ import annotations

import itertools

import torch
from pydantic import BaseModel
from torch import nn

from distree.models.macs import count_macs
from distree.models.registry import branch_layers


class Branch(nn.Module):
    """A network of blocks (a thin WRN, a small whitened convnet) cut into stages at the exit points.

    Stage k runs the residual blocks between exit point k-1 and exit point k (stage 0
    also runs the stem) and ends in a tap that pools the feature map into the small
    vector sent to the coordinator. ``run_stage`` is the only execution path: the
    whole-network ``forward``, offline evaluation and the device runtime all use it.
    """

    def __init__(self, config: BaseModel, exit_points: list[int], in_channels: int):
        """``config``: the branch's architecture (a ``WideResNetConfig``, a
        ``WhitenedConvNetConfig``: any family registered in ``models.registry``)."""
        super().__init__()
        self.config = config
        layers = branch_layers(config, in_channels)
        blocks = layers.blocks
        if exit_points[-1] != len(blocks):
            raise ValueError(f"the last exit point must be block {len(blocks)}, got {exit_points[-1]}")
        self.stem = layers.stem
        bounds = [0, *exit_points]
        self.stages = nn.ModuleList(nn.Sequential(*blocks[a:b]) for a, b in itertools.pairwise(bounds))
        self.out_dims = [layers.channels[b - 1] for b in exit_points]
        self.taps = nn.ModuleList(layers.tap(c) for c in self.out_dims)
        self._init_from_data = layers.init_from_data

    def init_from_data(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation from normalised training images (N, C, H, W), for
        the architectures that have one."""
        if self._init_from_data is not None:
            self._init_from_data(self.stem, x)

    @property
    def num_stages(self) -> int:
        """Number of stages (= number of exits)."""
        return len(self.stages)

    def run_stage(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run stage ``k``.

        ``x`` is the input image batch (B, C, H, W) for k = 0, else the feature map stage
        k-1 returned. Returns (feature map kept for stage k+1, pooled vector (B, out_dims[k])).
        """
        h = self.stem(x) if k == 0 else x
        h = self.stages[k](h)
        return h, self.taps[k](h)

    @torch.no_grad()
    def stage_macs(self, x: torch.Tensor) -> list[int]:
        """Per-sample MACs of every stage, counted on ``x``, one input (1, C, H, W)."""
        per = []
        for k in range(self.num_stages):
            per.append(count_macs(lambda k=k, x=x: self.run_stage(k, x)))
            x, _ = self.run_stage(k, x)
        return per

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All stages in turn; returns the pooled vector of every exit."""
        pooled = []
        h = x
        for k in range(self.num_stages):
            h, v = self.run_stage(k, h)
            pooled.append(v)
        return pooled
