"""Find a data set from --data, $DISTREE_DATA or a download, recognise its format, load it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from distree.config import DATA_ENV_VAR, DATA_FORMATS
from distree.data import cache
from distree.data.dataset import DataError, DataSplits, ImageSet, split_train_val
from distree.data.download import RELEASES, download_release
from distree.data.formats import cifar, idx, image_folder, npz

ENV_VAR = DATA_ENV_VAR

Reader = Callable[[Path], tuple[ImageSet, ImageSet]]
_READERS = {"image-folder": image_folder, "cifar10-python": cifar, "idx": idx, "npz": npz}
assert set(_READERS) == set(DATA_FORMATS), "every format --format names has a reader"
# In DATA_FORMATS' order, which matters only for ambiguous folders: the most specific first.
FORMATS: dict[str, tuple[Callable[[Path], bool], Reader]] = {
    name: (_READERS[name].detect, _READERS[name].load) for name in DATA_FORMATS
}


def resolve_path(data: str | None) -> Path:
    """Turn --data (a path or a downloadable name), else $DISTREE_DATA, into a local path."""
    value = data or os.environ.get(ENV_VAR)
    if not value:
        raise DataError(
            f"no data set given: pass --data PATH, or set {ENV_VAR}=PATH, or pass "
            f"--data {'|'.join(RELEASES)} to download the official release (needs internet)"
        )
    path = Path(value).expanduser()
    if path.exists():
        return path
    if value in RELEASES:
        return download_release(value, cache.cache_root() / "downloads")
    origin = "--data" if data else f"${ENV_VAR}"
    raise DataError(
        f"data path not found: {path} (from {origin}); pass an existing path, or "
        f"{'|'.join(RELEASES)} to download the official release"
    )


def detect_format(path: Path) -> str:
    """Name of the format found at ``path``."""
    for name, (detect, _) in FORMATS.items():
        if detect(path):
            return name
    raise DataError(
        f"cannot recognise a data set at {path}: expected ROOT/{{train,test}}/<class>/*.jpg, "
        "a CIFAR-10 python release, IDX files, or a NAME-train.npz/NAME-test.npz pair "
        f"(or name one with --format {'|'.join(FORMATS)})"
    )


def _fingerprint(fmt: str, path: Path) -> object:
    if fmt == "image-folder":
        return image_folder.fingerprint_files(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def load_raw(path: Path, fmt: str | None = None, use_cache: bool = True) -> tuple[ImageSet, ImageSet, str]:
    """(train, test, format name) at ``path``, decoded images cached between runs."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    key = cache.cache_key(fmt, path, _fingerprint(fmt, path)) if use_cache else None
    if key and (hit := cache.load_cached(key)):
        return (*hit, fmt)
    train, test = FORMATS[fmt][1](path)
    if train.image_shape != test.image_shape:
        raise DataError(f"{path}: train images are {train.image_shape} but test images {test.image_shape}")
    if train.image_shape[1] != train.image_shape[2]:
        raise DataError(f"{path}: images must be square, got {train.image_shape[1]}x{train.image_shape[2]}")
    if key:
        cache.store(key, train, test)
    return train, test, fmt


def load_data(
    data: str | None,
    fmt: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    use_cache: bool = True,
) -> DataSplits:
    """Load a data set and carve the validation split out of its training split."""
    path = resolve_path(data)
    train, test, fmt = load_raw(path, fmt, use_cache)
    train, val = split_train_val(train, val_fraction, split_seed)
    return DataSplits(train, val, test, str(path), fmt)
