"""Weights as safetensors, loaded with strict key matching; files written atomically.

The bottom layer every role reads weights through: a worker loads one branch, the
coordinator the exit heads, training and evaluation whole models.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that a crash leaves either the old or the new file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_weights(module: nn.Module, path: Path) -> None:
    """Save a module's state dict (parameters and buffers) as safetensors."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(state, str(tmp))
    os.replace(tmp, path)


@contextlib.contextmanager
def _tensors(path: Path, prefix: str) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors under ``prefix`` of a safetensors file, read in full; a missing file is
    FileNotFoundError, one that cannot be read (truncated, not safetensors) a ValueError
    that names it."""
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    try:
        # safe_open reads only the tensors asked for: a device loads just its own branch.
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118 - safe_open is no mapping
    except SafetensorError as err:
        raise ValueError(f"cannot read the weights in {path} ({err}): is the file complete?") from None
    yield tensors


def load_weights(module: nn.Module, path: Path, prefix: str = "") -> None:
    """Load safetensors weights into ``module`` with strict key matching.

    ``prefix`` selects the keys under it (``branches.2.`` loads one branch of a student).
    """
    with _tensors(path, prefix) as tensors:
        state = {k[len(prefix) :]: v for k, v in tensors.items()}
    expected = set(module.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was the run made with another config?"
        )
    module.load_state_dict(state, strict=True)


def fingerprint(path: Path, prefix: str = "", salt: bytes = b"") -> str:
    """A short hash of the tensors under ``prefix`` in a safetensors file (names, dtypes,
    shapes and values) and of ``salt``: the same weights give the same fingerprint on any
    machine, any other weights a different one."""
    h = hashlib.sha256(salt)
    with _tensors(path, prefix) as tensors:
        for k in sorted(tensors):
            t = tensors[k].contiguous()
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
