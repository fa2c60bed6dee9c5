"""A cache of decoded data sets, so a second load skips image decoding."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from distree.data.dataset import ImageSet

CACHE_VERSION = 1


def cache_root() -> Path:
    """$DISTREE_CACHE, else $XDG_CACHE_HOME/distree, else ~/.cache/distree."""
    env = os.environ.get("DISTREE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "distree"


def cache_key(fmt: str, path: Path, fingerprint: object) -> str:
    """A key that changes when the format, the path or the files' sizes and times change."""
    blob = json.dumps([CACHE_VERSION, fmt, str(path.resolve()), fingerprint], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load_cached(key: str) -> tuple[ImageSet, ImageSet] | None:
    """The cached (train, test) for ``key``, or None."""
    file = cache_root() / "decoded" / f"{key}.safetensors"
    meta = file.with_suffix(".json")
    if not (file.is_file() and meta.is_file()):
        return None
    try:
        t = load_file(file)
        classes = json.loads(meta.read_text())["classes"]
        return (
            ImageSet(t["train_images"], t["train_labels"], classes),
            ImageSet(t["test_images"], t["test_labels"], classes),
        )
    except Exception:  # noqa: BLE001 - whatever the damage (safetensors raises its own), rebuild
        for f in (file, meta):
            f.unlink(missing_ok=True)
        return None


def store(key: str, train: ImageSet, test: ImageSet) -> None:
    """Write (train, test) under ``key``; a read-only cache location is skipped silently."""
    d = cache_root() / "decoded"
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{key}.tmp.{os.getpid()}"
        save_file(
            {
                "train_images": train.images.contiguous(),
                "train_labels": train.labels.contiguous(),
                "test_images": test.images.contiguous(),
                "test_labels": test.labels.contiguous(),
            },
            str(tmp),
        )
        (d / f"{key}.json").write_text(json.dumps({"classes": train.classes}))
        tmp.rename(d / f"{key}.safetensors")
    except OSError:
        pass
