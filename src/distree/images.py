"""Images as they come (files, bytes, PIL images, arrays of any size) to a model's input.

A model takes uint8 images (B, C, H, W) of one size and channel count. Applications hold
camera frames, files and arrays of other sizes; ``as_model_input`` converts them the way
the data loaders do (grayscale or RGB, resized to the model's size), so the client, the
in-process API and ``distree infer`` convert alike. numpy only for input that is already
the model's shape; anything to decode or resize needs Pillow.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: What one image may be given as.
ImageLike = Any  # str | Path | bytes | PIL.Image.Image | np.ndarray (H, W), (H, W, C) or (C, H, W)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def pillow():
    """Pillow's Image module, or an ImportError that says how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "converting images (files, bytes, other sizes or colours) needs Pillow: pip install 'distree[images]'"
        ) from None
    return Image


def _is_array(x: Any) -> bool:
    """A numpy array or something that converts to one (a torch tensor), but not a PIL
    image (which converts too)."""
    return isinstance(x, np.ndarray) or (hasattr(x, "__array__") and not hasattr(x, "convert"))


def _one(image: ImageLike, shape: tuple[int, int, int]) -> np.ndarray:
    """One image -> uint8 (C, H, W) of ``shape``."""
    c, h, w = shape
    if _is_array(image):
        a = np.asarray(image)
        if a.dtype != np.uint8:
            raise ValueError(f"an image array must hold uint8 pixels (0..255), got {a.dtype}")
        if a.shape == shape:
            return a
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
            a = a.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
            raise ValueError(f"an image array must be (H, W), (H, W, C) or (C, H, W) with C 1, 3 or 4; got {a.shape}")
        image = pillow().fromarray(a)
    elif isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        image = _open(path.read_bytes(), str(path))
    elif isinstance(image, bytes | bytearray | memoryview):
        image = _open(bytes(image), "the bytes given")
    elif not hasattr(image, "convert"):
        raise TypeError(f"cannot read an image from a {type(image).__name__}")
    image = eight_bit(image).convert("L" if c == 1 else "RGB")
    if image.size != (w, h):
        image = image.resize((w, h), pillow().Resampling.BILINEAR)
    a = np.array(image, dtype=np.uint8)  # a copy: what Pillow exposes is read-only
    return a[None] if c == 1 else a.transpose(2, 0, 1)


#: Pillow's modes for one channel of more than 8 bits of integers (16-bit PNG and TIFF).
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def eight_bit(image):
    """A Pillow image with at most 8 bits per channel: 16-bit grayscale is scaled down to
    0..255 (Pillow's own conversion would clip it, turning most images white), and
    floating-point or wider pixels are refused with a ValueError. 16-bit colour needs
    nothing: Pillow already reads it as 8-bit RGB."""
    if image.mode in _WIDE_GRAY:
        a = np.asarray(image).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(
                f"pixels outside 0..65535 (mode {image.mode}): only 8- and 16-bit images are read; "
                "convert it to 8 bits per channel"
            )
        return pillow().fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    if image.mode == "F":
        raise ValueError("floating-point pixels (mode F): convert the image to 8 bits per channel")
    return image


def _open(data: bytes, what: str):
    Image = pillow()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # noqa: BLE001 - Pillow raises several kinds for bad data
        raise ValueError(f"{what}: not an image Pillow can read ({err})") from None
    try:
        return eight_bit(image)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def as_model_input(images: ImageLike | Sequence[ImageLike], shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (B, C, H, W) of ``shape`` (C, H, W) from one image or a sequence of them.

    A uint8 array already (B, C, H, W) of ``shape`` passes as it is; a 4-d array of
    another size is taken as B images."""
    shape = tuple(int(s) for s in shape)
    if _is_array(images):
        a = np.asarray(images)
        if a.ndim == 4:
            if a.shape[1:] == shape and a.dtype == np.uint8:
                return a
            return np.stack([_one(x, shape) for x in a]) if len(a) else np.zeros((0, *shape), np.uint8)
        return _one(a, shape)[None]
    if isinstance(images, str | Path | bytes | bytearray | memoryview) or hasattr(images, "convert"):
        return _one(images, shape)[None]
    items = list(images)
    if not items:
        raise ValueError("no images given")
    return np.stack([_one(x, shape) for x in items])


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The image files named: files as given, folders searched recursively (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out
