"""The paper's teacher: a standard pre-activation CIFAR WideResNet (Zagoruyko & Komodakis, 2016)."""

from __future__ import annotations

from torch import nn

from distree.config import WideResNetConfig
from distree.models.layers import PooledTap, init_weights, wrn_blocks
from distree.models.registry import BranchLayers, register_branch_layers, register_teacher
from distree.models.teacher import Teacher


@register_teacher(WideResNetConfig)
class WideResNet(Teacher):
    """WRN-d-k. Input (B, in_channels, H, W) float -> TeacherOutput."""

    def __init__(self, config: WideResNetConfig, in_channels: int, num_classes: int):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        stem, blocks = wrn_blocks(config.depth, config.width, config.dropout)
        self.stem = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.blocks = nn.Sequential(*blocks)
        self.block_channels = [b.conv2.out_channels for b in blocks]
        self.feature_dim = self.block_channels[-1]
        self.tap = PooledTap(self.feature_dim)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        init_weights(self)


@register_branch_layers(WideResNetConfig)
def wideresnet_branch(config: WideResNetConfig, in_channels: int) -> BranchLayers:
    """A thin WRN as a student branch: a stem convolution, the residual blocks, and a
    BN-ReLU-average-pool tap after any of them (the blocks are pre-activation)."""
    stem_channels, blocks = wrn_blocks(config.depth, config.width, config.dropout)
    stem = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
    init_weights(nn.Sequential(stem, *blocks))
    return BranchLayers(stem, blocks, [b.conv2.out_channels for b in blocks], PooledTap)
