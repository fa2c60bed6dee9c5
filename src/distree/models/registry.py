"""Architectures by config type: each family registers how to build a teacher and a
student branch's layers from its config (``arch`` in a config file names the family).

The families register themselves when ``distree.models`` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel
from torch import nn

if TYPE_CHECKING:
    from distree.models.teacher import Teacher


@dataclass
class BranchLayers:
    """The layers of one student branch: ``stem`` then ``blocks`` (each block's output has
    ``channels[i]`` channels), ``tap(c)`` a module pooling a c-channel map into the vector
    an exit sees, ``init_from_data(stem, x)`` the data-dependent initialisation of the
    stem from normalised training images, if any."""

    stem: nn.Module
    blocks: list[nn.Module]
    channels: list[int]
    tap: Callable[[int], nn.Module]
    init_from_data: Callable[[nn.Module, torch.Tensor], None] | None = None


_TEACHERS: dict[type[BaseModel], type[Teacher]] = {}
_BRANCHES: dict[type[BaseModel], Callable[[BaseModel, int], BranchLayers]] = {}


def register_teacher(config_type: type[BaseModel]) -> Callable[[type[Teacher]], type[Teacher]]:
    """Class decorator: the teacher built for configs of ``config_type``."""

    def register(cls: type[Teacher]) -> type[Teacher]:
        _TEACHERS[config_type] = cls
        return cls

    return register


def register_branch_layers(config_type: type[BaseModel]) -> Callable:
    """Function decorator: ``fn(config, in_channels) -> BranchLayers`` builds a student
    branch of configs of ``config_type``."""

    def register(fn: Callable[[BaseModel, int], BranchLayers]) -> Callable[[BaseModel, int], BranchLayers]:
        _BRANCHES[config_type] = fn
        return fn

    return register


def _lookup(table: dict, config: BaseModel, what: str):
    try:
        return table[type(config)]
    except KeyError:
        raise ValueError(f"no {what} registered for {type(config).__name__}") from None


def build_teacher(config: BaseModel, in_channels: int, num_classes: int) -> Teacher:
    """An untrained teacher of the architecture ``config`` describes."""
    return _lookup(_TEACHERS, config, "teacher architecture")(config, in_channels, num_classes)


def branch_layers(config: BaseModel, in_channels: int) -> BranchLayers:
    """The untrained layers of a student branch of the architecture ``config`` describes."""
    return _lookup(_BRANCHES, config, "branch architecture")(config, in_channels)
