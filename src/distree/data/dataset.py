"""In-memory image data sets and the deterministic train/validation split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


class DataError(ValueError):
    """A data set is missing, malformed or inconsistent; the message says which file."""


def classes_from_labels(labels: torch.Tensor, source: object) -> int:
    """The class count of a format that stores no class list: max label + 1, with every
    class present, since a class without images is most often one corrupt label (one byte
    of an IDX label file turned 10 classes into 251)."""
    n = int(labels.max()) + 1 if labels.numel() else 0
    empty = (torch.bincount(labels, minlength=n) == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:5])) + (" ..." if len(empty) > 5 else "")
        raise DataError(
            f"{source}: labels run to {n - 1} but {len(empty)} of {n} classes have no images ({shown}); "
            "is a label corrupt?"
        )
    return n


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 (N, C, H, W), labels as int64 (N,), and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if len(self) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(f"labels must lie in 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor) -> ImageSet:
        """The samples at ``index`` (a 1-D int64 tensor)."""
        return ImageSet(self.images[index], self.labels[index], self.classes)


@dataclass(frozen=True)
class DataSplits:
    """The train, validation and test splits of one data set, and where it came from."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    source: str
    format: str

    def with_train_limit(self, n: int, seed: int) -> DataSplits:
        """These splits with ``n`` training samples drawn at random (``seed``), in their order."""
        if n < 1:
            raise DataError(f"--limit must be at least 1, got {n}")
        pick = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
        return dataclasses.replace(self, train=self.train.subset(pick[:n].sort().values))

    @property
    def in_channels(self) -> int:
        """Image channels (1 for grayscale, 3 for RGB)."""
        return self.train.image_shape[0]

    @property
    def image_size(self) -> int:
        """Image height (= width)."""
        return self.train.image_shape[1]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.train.classes)


def split_train_val(train: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Carve a validation split out of the training split.

    Deterministic in (len(train), val_fraction, seed), independent of the training seed,
    so calibration always sees the same held-out samples.
    """
    n = len(train)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(f"a validation fraction of {val_fraction} leaves no training samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)
