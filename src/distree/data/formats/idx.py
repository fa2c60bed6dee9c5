"""IDX files (MNIST, Fashion-MNIST): {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from distree.data.dataset import DataError, ImageSet, classes_from_labels

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _find(path: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (path / name).is_file():
            return path / name
    return None


def detect(path: Path) -> bool:
    """True when ``path`` is a folder with the four IDX files."""
    return path.is_dir() and all(_find(path, s) for pair in FILES.values() for s in pair)


def read_idx(file: Path) -> np.ndarray:
    """Parse one IDX file (gzip or not) into a numpy array."""
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError) as err:
        raise DataError(f"corrupt IDX file {file}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"corrupt IDX file {file}: bad magic number (expected unsigned-byte data)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt IDX file {file}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DataError(f"corrupt IDX file {file}: header says {shape} ({count} bytes), file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load(path: Path) -> tuple[ImageSet, ImageSet]:
    """Read the train and t10k image/label pairs."""
    out = []
    for split, (img_stem, lbl_stem) in FILES.items():
        img_file, lbl_file = _find(path, img_stem), _find(path, lbl_stem)
        if img_file is None or lbl_file is None:
            raise DataError(f"{path}: missing {img_stem}[.gz] or {lbl_stem}[.gz]")
        x, y = read_idx(img_file), read_idx(lbl_file)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{path}: {split} images {x.shape} and labels {y.shape} do not match")
        out.append((torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
    n_classes = classes_from_labels(torch.cat([out[0][1], out[1][1]]), path)
    classes = (
        FASHION_CLASSES if n_classes == 10 and "fashion" in str(path).lower() else [str(i) for i in range(n_classes)]
    )
    return ImageSet(*out[0], classes), ImageSet(*out[1], classes)
