"""Packed .npz splits: NAME-train.npz and NAME-test.npz.

Each holds either encoded images (``jpeg`` bytes concatenated, ``offsets`` of length n+1)
or decoded ``images`` (uint8, NHWC or NCHW), plus ``labels`` and ``classes``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from distree.data.dataset import DataError, ImageSet, classes_from_labels
from distree.data.formats.image_folder import decode_all


def pair(path: Path) -> tuple[Path, Path] | None:
    """The (train, test) files for ``path``: a *-train.npz / *-test.npz file or a folder with one pair."""
    if path.is_file() and path.name.endswith(("-train.npz", "-test.npz")):
        prefix = path.name.rsplit("-", 1)[0]
        train, test = path.with_name(prefix + "-train.npz"), path.with_name(prefix + "-test.npz")
        return (train, test) if train.is_file() and test.is_file() else None
    if path.is_dir():
        trains = sorted(path.glob("*-train.npz"))
        if len(trains) == 1:
            test = trains[0].with_name(trains[0].name[: -len("-train.npz")] + "-test.npz")
            if test.is_file():
                return trains[0], test
    return None


def detect(path: Path) -> bool:
    """True when a train/test .npz pair is found at ``path``."""
    return pair(path) is not None


def _as_uint8(x: np.ndarray, file: Path) -> np.ndarray:
    """Images as stored, if they are 0..255 integers; anything else is refused with what to do
    (a cast would turn floats in [0, 1) into 0)."""
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer) and (x.size == 0 or (x.min() >= 0 and x.max() <= 255)):
        return x.astype(np.uint8)
    hint = (
        " (scaled to [0, 1]? store (x * 255).round().astype(np.uint8))" if np.issubdtype(x.dtype, np.floating) else ""
    )
    raise DataError(f"{file}: images are {x.dtype}; distree reads uint8 images 0..255{hint}")


def load_file(file: Path) -> ImageSet:
    """Read one packed split."""
    try:
        with np.load(file, allow_pickle=False) as z:
            labels = torch.from_numpy(z["labels"].astype(np.int64))
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
            if "images" in z.files:
                x = z["images"]
                if x.ndim != 4:
                    raise DataError(f"{file}: images must be 4-D, got shape {x.shape}")
                x = _as_uint8(x, file)
                images = torch.from_numpy(np.ascontiguousarray(x if x.shape[1] in (1, 3) else x.transpose(0, 3, 1, 2)))
            else:
                blob, off = z["jpeg"], z["offsets"]
                if len(off) != len(labels) + 1:
                    raise DataError(f"{file}: {len(off) - 1} images but {len(labels)} labels")
                items = [
                    (f"{file}[{i}]", lambda a=int(off[i]), b=int(off[i + 1]): blob[a:b].tobytes())
                    for i in range(len(labels))
                ]
                images = decode_all(items)
    except (KeyError, ValueError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"corrupt .npz file {file}: {err or 'empty file'}") from None
    if classes is None:
        classes = [str(i) for i in range(classes_from_labels(labels, file))]
    return ImageSet(images.to(torch.uint8), labels, classes)


def load(path: Path) -> tuple[ImageSet, ImageSet]:
    """Read the train and test files of the pair found at ``path``."""
    found = pair(path)
    if found is None:
        raise DataError(f"{path}: no NAME-train.npz / NAME-test.npz pair")
    return load_file(found[0]), load_file(found[1])
