"""Building blocks shared by the teacher and the student branches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scaled_channels(base: int, width: float) -> int:
    """Channels of a group with ``base`` channels at widening factor ``width`` (at least 1)."""
    return max(1, round(base * width))


class PreActBlock(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv x2), as in WideResNet.

    Input (B, C_in, H, W) -> output (B, C_out, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # The projection shortcut reads the activated input, as in the reference WRN.
        residual = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        if self.dropout:
            o = F.dropout(o, self.dropout, self.training)
        return self.conv2(o) + residual


class PooledTap(nn.Module):
    """BN-ReLU-global-average-pool: turns a pre-activation feature map into a vector.

    (B, C, H, W) -> (B, C).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(x)).mean(dim=(2, 3))


def wrn_blocks(depth: int, width: float, dropout: float) -> tuple[int, list[PreActBlock]]:
    """Return (stem channels, the 3n residual blocks of a WRN-depth-width in order)."""
    n = (depth - 4) // 6
    stem = scaled_channels(16, min(width, 1.0))
    widths = [scaled_channels(c, width) for c in (16, 32, 64)]
    blocks: list[PreActBlock] = []
    c_in = stem
    for g, c_out in enumerate(widths):
        for i in range(n):
            stride = 2 if (g > 0 and i == 0) else 1
            blocks.append(PreActBlock(c_in, c_out, stride, dropout))
            c_in = c_out
    return stem, blocks


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions, unit BN, zero biases: the usual WideResNet initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
