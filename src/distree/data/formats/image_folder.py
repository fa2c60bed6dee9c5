"""Image folders: ROOT/{train,test}/<class>/*.{jpg,jpeg,png}, one folder per class."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from distree.data.dataset import DataError, ImageSet
from distree.images import eight_bit

EXTENSIONS = {".jpg", ".jpeg", ".png"}


def detect(path: Path) -> bool:
    """True when ``path`` holds train/ and test/ folders."""
    return path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir()


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one encoded image to uint8 (H, W, C); grayscale stays one channel."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im8 = eight_bit(im)
            arr = np.asarray(im8 if im8.mode in ("L", "RGB") else im8.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DataError(
            f"image {name} is too large to decode safely (over {2 * Image.MAX_IMAGE_PIXELS} pixels); "
            "is it an image of this data set?"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"corrupt or unreadable image {name}: {err}") from None
    except ValueError as err:  # pixels of a depth that cannot be read (eight_bit)
        raise DataError(f"image {name}: {err}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def stack_images(arrays: list[np.ndarray], names: list[str]) -> torch.Tensor:
    """Stack (H, W, C) arrays into one uint8 (N, C, H, W) tensor, refusing mixed sizes."""
    if not arrays:
        raise DataError("no images")
    first = arrays[0].shape
    for a, name in zip(arrays, names):
        if a.shape != first:
            raise DataError(
                f"mixed image sizes: {names[0]} is {first[1]}x{first[0]}x{first[2]} but {name} is "
                f"{a.shape[1]}x{a.shape[0]}x{a.shape[2]} (width x height x channels); resize the data set first"
            )
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def decode_all(items: list[tuple[str, Callable[[], bytes]]]) -> torch.Tensor:
    """Decode (name, read-bytes) pairs in a few threads (PIL releases the GIL while decoding)."""

    def one(item: tuple[str, Callable[[], bytes]]) -> np.ndarray:
        name, read = item
        try:
            data = read()
        except OSError as err:  # a dangling or looping link, a file without read permission
            raise DataError(f"cannot read {name}: {err.strerror}") from None
        return decode_image(data, name)

    with ThreadPoolExecutor(max_workers=4) as pool:
        arrays = list(pool.map(one, items))
    return stack_images(arrays, [name for name, _ in items])


def list_split(split_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their class indices and the sorted class names of one split folder."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{split_dir} has no class folders (expected {split_dir}/<class>/*.jpg)")
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        found = sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in EXTENSIONS)
        if not found:
            raise DataError(f"empty class folder {split_dir / c}: no .jpg, .jpeg or .png files")
        files += found
        labels += [i] * len(found)
    return files, labels, classes


def load_split(split_dir: Path) -> ImageSet:
    """Read and decode one split folder."""
    files, labels, classes = list_split(split_dir)
    images = decode_all([(str(f), f.read_bytes) for f in files])
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), classes)


def load(path: Path) -> tuple[ImageSet, ImageSet]:
    """Read ROOT/train and ROOT/test; both must have the same classes."""
    train, test = load_split(path / "train"), load_split(path / "test")
    if train.classes != test.classes:
        raise DataError(f"{path}: train/ and test/ have different class folders")
    if train.image_shape != test.image_shape:
        raise DataError(f"{path}: train images are {train.image_shape}, test images {test.image_shape}")
    return train, test


def fingerprint_files(path: Path) -> list[tuple[str, int, int]]:
    """(relative name, size, mtime) of every image, so a changed folder misses the cache."""
    out = []
    for split in ("train", "test"):
        with os.scandir(path / split) as classes:
            class_dirs = sorted(e.path for e in classes if e.is_dir())
        for d in class_dirs:
            with os.scandir(d) as entries:
                for e in entries:
                    if os.path.splitext(e.name)[1].lower() in EXTENSIONS:
                        try:
                            st = e.stat()
                        except OSError as err:
                            raise DataError(f"cannot read {e.path}: {err.strerror}") from None
                        out.append((os.path.relpath(e.path, path), st.st_size, st.st_mtime_ns))
    out.sort()
    return out
