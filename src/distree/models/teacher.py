"""What every teacher architecture provides.

A teacher is a stem, a sequence of blocks, a tap that pools the last block's map into the
feature vector the student's feature transfer aims at, and a classifier. The single-device
early-exit baseline (``models/probes.py``) hangs its heads between the blocks, so any
teacher that keeps this shape gets it for free.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class TeacherOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_classes)
    features: torch.Tensor  # (B, feature_dim): the pooled penultimate features


class Teacher(nn.Module):
    """Input (B, in_channels, H, W) float -> TeacherOutput.

    Subclasses set ``stem``, ``blocks`` (nn.Sequential), ``block_channels`` (output
    channels of each block), ``tap`` ((B, C, h, w) -> (B, feature_dim)), ``fc``
    (features -> logits) and ``feature_dim``.
    """

    stem: nn.Module
    blocks: nn.Sequential
    tap: nn.Module
    fc: nn.Module
    block_channels: list[int]
    feature_dim: int
    num_classes: int

    def init_from_data(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation from normalised training images (N, C, H, W);
        nothing by default."""

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        features = self.tap(self.blocks(self.stem(x)))
        return TeacherOutput(self.fc(features), features)
