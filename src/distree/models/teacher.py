"""What every teacher architecture provides, and the registry that builds one from its config.

A teacher is a stem, a sequence of blocks, a tap that pools the last block's map into the
feature vector the student's feature transfer aims at, and a classifier. The single-device
early-exit baseline (``models/probes.py``) hangs its heads between the blocks, so any
teacher that keeps this shape gets it for free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from pydantic import BaseModel
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


_TEACHERS: dict[type[BaseModel], type[Teacher]] = {}


def register_teacher(config_type: type[BaseModel]) -> Callable[[type[Teacher]], type[Teacher]]:
    """Class decorator: the teacher built for configs of ``config_type`` (whose ``arch``
    field names it in a config file)."""

    def register(cls: type[Teacher]) -> type[Teacher]:
        _TEACHERS[config_type] = cls
        return cls

    return register


def build_teacher(config: BaseModel, in_channels: int, num_classes: int) -> Teacher:
    """An untrained teacher of the architecture ``config`` describes."""
    try:
        cls = _TEACHERS[type(config)]
    except KeyError:
        raise ValueError(f"no teacher architecture registered for {type(config).__name__}") from None
    return cls(config, in_channels, num_classes)
