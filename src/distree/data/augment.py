"""Input normalisation and batch augmentation on tensors, on the training device."""

from __future__ import annotations

from dataclasses import dataclass

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


def random_crop_flip(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad by ``padding``, crop back at a random offset per image, flip half the images.

    (B, C, H, W) -> ((B, C, H, W), mirror (B,) bool: which images were flipped). Random
    draws come from ``generator`` (on x's device).
    """
    b, c, h, w = x.shape
    if padding:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    mirror = torch.zeros(b, dtype=torch.bool, device=x.device)
    if flip:
        mirror = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x, mirror
