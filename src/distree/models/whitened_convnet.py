"""A fast plain convnet for the teacher, after airbench (Jordan, 2024: 94% on CIFAR-10 in
about 10 epochs): a frozen first layer that whitens image patches, then one group per
width, and a scaled linear classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distree.config import WhitenedConvNetConfig
from distree.models.registry import BranchLayers, register_branch_layers, register_teacher
from distree.models.teacher import Teacher

#: Added to the patch covariance's eigenvalues before whitening by them: keeps the
#: near-constant directions of the patches from being blown up to noise.
WHITEN_EPS = 5e-4


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1: only the shift learns (one fewer degree of freedom
    per channel, which the following convolution's scale already has)."""

    def __init__(self, channels: int, momentum: float):
        super().__init__(channels, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    # The first c_in filters start as the identity: the group starts close to passing its
    # input through, which lets the high learning rate of the recipe work from step one.
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


class ConvGroup(nn.Module):
    """conv, 2x2 max-pool, BN, GELU, conv, BN, GELU: (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__()
        self.conv1 = _conv(c_in, c_out)
        self.norm1 = FrozenScaleBatchNorm(c_out, bn_momentum)
        self.conv2 = _conv(c_out, c_out)
        self.norm2 = FrozenScaleBatchNorm(c_out, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class GlobalMaxPool(nn.Module):
    """(B, C, H, W) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class ScaledLinear(nn.Linear):
    """A bias-free linear classifier whose output is multiplied by a fixed ``scale``:
    small initial logits without a special initialisation."""

    def __init__(self, features: int, classes: int, scale: float):
        super().__init__(features, classes, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def whitening_stem(in_channels: int, kernel: int) -> nn.Sequential:
    """A frozen k x k convolution to whiten patches (``whiten_from_data`` sets it), each
    whitened direction and its negative, then GELU: the GELU keeps both signs.
    (B, C, H, W) -> (B, 2 C k^2, H - k + 1, W - k + 1)."""
    whiten = nn.Conv2d(in_channels, 2 * in_channels * kernel * kernel, kernel, padding=0, bias=True)
    whiten.weight.requires_grad_(False)
    nn.init.zeros_(whiten.bias)
    return nn.Sequential(whiten, nn.GELU())


@torch.no_grad()
def whiten_from_data(stem: nn.Module, x: torch.Tensor) -> None:
    """Set ``whitening_stem``'s convolution to whiten the k x k patches of the normalised
    training images ``x`` (N, C, H, W): its filters are the eigenvectors of the patch
    covariance scaled by 1 / sqrt(eigenvalue)."""
    whiten = stem[0]
    k = whiten.kernel_size[0]
    x = x.float()
    c = x.shape[1]
    patches = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues + WHITEN_EPS)[:, None]).reshape(-1, c, k, k)
    whiten.weight.copy_(torch.cat([filters, -filters]).to(whiten.weight))


def conv_groups(c_in: int, config: WhitenedConvNetConfig) -> list[ConvGroup]:
    """One ConvGroup per width, the first reading ``c_in`` channels."""
    groups = []
    for width in config.widths:
        groups.append(ConvGroup(c_in, width, config.bn_momentum))
        c_in = width
    return groups


@register_teacher(WhitenedConvNetConfig)
class WhitenedConvNet(Teacher):
    """Input (B, in_channels, H, W) float, H and W at least 8 x 2^(groups-1) -> TeacherOutput."""

    def __init__(self, config: WhitenedConvNetConfig, in_channels: int, num_classes: int):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.stem = whitening_stem(in_channels, config.whiten_kernel)
        self.blocks = nn.Sequential(*conv_groups(self.stem[0].out_channels, config))
        self.block_channels = list(config.widths)
        self.feature_dim = config.widths[-1]
        self.tap = GlobalMaxPool()
        self.fc = ScaledLinear(self.feature_dim, num_classes, config.logit_scale)

    def init_from_data(self, x: torch.Tensor) -> None:
        """Whiten the first layer on the normalised training images ``x`` (N, C, H, W)."""
        whiten_from_data(self.stem, x)


@register_branch_layers(WhitenedConvNetConfig)
def whitened_convnet_branch(config: WhitenedConvNetConfig, in_channels: int) -> BranchLayers:
    """A whitened convnet as a student branch, an exit possible after any group, its tap
    a global max-pool as the teacher's."""
    stem = whitening_stem(in_channels, config.whiten_kernel)
    blocks = conv_groups(stem[0].out_channels, config)
    return BranchLayers(stem, blocks, list(config.widths), lambda channels: GlobalMaxPool(), whiten_from_data)
