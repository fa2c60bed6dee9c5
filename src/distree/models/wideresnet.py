"""The teacher: a standard pre-activation CIFAR WideResNet (Zagoruyko & Komodakis, 2016)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from distree.config import WideResNetConfig
from distree.models.layers import PooledTap, init_weights, wrn_blocks


class TeacherOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_classes)
    features: torch.Tensor  # (B, feature_dim): the pooled penultimate features


class WideResNet(nn.Module):
    """WRN-d-k. Input (B, in_channels, H, W) float -> TeacherOutput."""

    def __init__(self, config: WideResNetConfig, in_channels: int, num_classes: int):
        super().__init__()
        self.config = config
        stem, blocks = wrn_blocks(config.depth, config.width, config.dropout)
        self.stem = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = blocks[-1].conv2.out_channels
        self.tap = PooledTap(self.feature_dim)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        features = self.tap(self.blocks(self.stem(x)))
        return TeacherOutput(self.fc(features), features)
