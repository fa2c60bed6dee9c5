"""The CIFAR-10 python release: cifar-10-batches-py/ as a folder or the .tar.gz archive."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from distree.data.dataset import DataError, ImageSet

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: the release is pickled, but a
    file from the internet must not be able to run code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, name: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any failure means a corrupt batch file
        raise DataError(f"corrupt CIFAR-10 batch {name}: {err}") from None
    if not isinstance(obj, dict):
        raise DataError(f"corrupt CIFAR-10 batch {name}: not a dictionary")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(data, name)
    try:
        x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d["labels"], dtype=np.int64)
    except (KeyError, ValueError) as err:
        raise DataError(f"corrupt CIFAR-10 batch {name}: {err}") from None
    if len(x) != len(y):
        raise DataError(f"corrupt CIFAR-10 batch {name}: {len(x)} images but {len(y)} labels")
    return x, y


def _batch_dir(path: Path) -> Path | None:
    for d in (path, path / "cifar-10-batches-py"):
        if (d / TEST_BATCH).is_file() and (d / TRAIN_BATCHES[0]).is_file():
            return d
    return None


def detect(path: Path) -> bool:
    """True for a cifar-10-batches-py folder (or its parent) or a .tar.gz of it."""
    if path.is_file():
        return path.name.endswith((".tar.gz", ".tgz")) and "cifar" in path.name.lower()
    return path.is_dir() and _batch_dir(path) is not None


def _read_members(path: Path) -> dict[str, bytes]:
    wanted = set(TRAIN_BATCHES) | {TEST_BATCH, META}
    if path.is_file():
        try:
            with tarfile.open(path, "r:gz") as tar:
                out = {}
                for m in tar.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in wanted:
                        out[base] = tar.extractfile(m).read()  # type: ignore[union-attr]
                return out
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"corrupt CIFAR-10 archive {path}: {err}") from None
    d = _batch_dir(path)
    if d is None:
        raise DataError(f"{path} holds no CIFAR-10 batches ({TEST_BATCH}, {TRAIN_BATCHES[0]}, ...)")
    return {n: (d / n).read_bytes() for n in wanted if (d / n).is_file()}


def load(path: Path) -> tuple[ImageSet, ImageSet]:
    """Read the five training batches and the test batch."""
    members = _read_members(path)
    missing = [n for n in [*TRAIN_BATCHES, TEST_BATCH] if n not in members]
    if missing:
        raise DataError(f"{path}: missing CIFAR-10 batch file(s) {', '.join(missing)}")
    classes = [f"class_{i}" for i in range(10)]
    if META in members:
        names = _unpickle(members[META], META).get("label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    parts = [_batch(members[n], n) for n in TRAIN_BATCHES]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _batch(members[TEST_BATCH], TEST_BATCH)
    return (
        ImageSet(torch.from_numpy(xtr), torch.from_numpy(ytr), classes),
        ImageSet(torch.from_numpy(xte), torch.from_numpy(yte), classes),
    )
