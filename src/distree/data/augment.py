"""Input normalisation and batch augmentation on tensors, on the training device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std (on the 0..1 scale), measured on the training split."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, images: torch.Tensor) -> Normalization:
        """Measure from uint8 (N, C, H, W) images."""
        x = images.float().div_(255).transpose(0, 1).reshape(images.shape[1], -1)
        return cls(tuple(x.mean(1).tolist()), tuple(x.std(1).clamp_min(1e-3).tolist()))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float32 (B, C, H, W), on the images' device."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std


class Views(NamedTuple):
    """Augmentation parameters, one per image (or per image and view): crop offsets in
    0..2*padding and horizontal mirroring."""

    dy: torch.Tensor  # int64
    dx: torch.Tensor  # int64
    mirror: torch.Tensor  # bool


def random_views(
    shape: tuple[int, ...], padding: int, flip: bool, generator: torch.Generator | None = None, device=None
) -> Views:
    """Uniform crop offsets and fair-coin mirroring, each of ``shape``."""

    def offsets() -> torch.Tensor:
        if not padding:
            return torch.zeros(shape, dtype=torch.long, device=device)
        return torch.randint(0, 2 * padding + 1, shape, device=device, generator=generator)

    dy, dx = offsets(), offsets()
    mirror = torch.zeros(shape, dtype=torch.bool, device=device)
    if flip:
        mirror = torch.rand(shape, device=device, generator=generator) < 0.5
    return Views(dy, dx, mirror)


def apply_views(x: torch.Tensor, padding: int, views: Views, pad_mode: str = "zeros") -> torch.Tensor:
    """Pad (B, C, H, W) by ``padding`` (with zeros, or ``reflect``: mirrored borders), crop
    back at each image's offset, mirror the images marked so; ``views`` has (B,) entries."""
    b, c, h, w = x.shape
    if padding:
        mode = "constant" if pad_mode == "zeros" else pad_mode
        padded = F.pad(x, (padding, padding, padding, padding), mode=mode)
        rows = (views.dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (views.dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if bool(views.mirror.any()):
        x = torch.where(views.mirror[:, None, None, None], x.flip(3), x)
    return x


def random_crop_flip(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad by ``padding``, crop back at a random offset per image, flip half the images.

    (B, C, H, W) -> ((B, C, H, W), mirror (B,) bool: which images were flipped). Random
    draws come from ``generator`` (on x's device).
    """
    views = random_views((x.shape[0],), padding, flip, generator, x.device)
    return apply_views(x, padding, views), views.mirror
