"""Training state as safetensors plus JSON: weights, optimizer state and progress, no pickles.

A state is three files beside each other, so that each stays small enough to commit (a
run that spans sessions commits its state; a WRN-16-3 teacher's weights and its momentum
are 6.2 MB each, 12.4 MB together):

    PHASE.safetensors        the module's weights and the RNG state
    PHASE.optim.safetensors  the optimizer's tensors (momentum buffers)
    PHASE.json               progress, the optimizer's settings and scalars

Both tensor files carry the progress's ``stamp`` in their metadata: a process killed while
it replaced the three leaves files of two epochs, which ``load_train_state`` refuses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from distree.weights import atomic_write_text


class TrainStateError(RuntimeError):
    """The files of a resume state do not belong together, or one is missing."""


def state_files(path: Path) -> tuple[Path, Path, Path]:
    """(weights, optimizer, progress) files of the state at ``path`` (``PHASE.safetensors``)."""
    return path, path.with_suffix(".optim.safetensors"), path.with_suffix(".json")


def _stamp(progress: dict[str, Any]) -> str:
    return json.dumps(progress, sort_keys=True)


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, progress: dict[str, Any]) -> None:
    """Save weights and RNG state, optimizer state (safetensors) and ``progress`` (JSON)."""
    weights_file, optim_file, progress_file = state_files(path)
    opt = optimizer.state_dict()
    weights = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights["rng.cpu"] = torch.get_rng_state()
    optim: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in opt["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                optim[f"optim.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    stamp = {"stamp": _stamp(progress)}
    for file, tensors in ((optim_file, optim), (weights_file, weights)):
        tmp = file.with_name(file.name + f".tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata=stamp)
        os.replace(tmp, file)
    meta = {"progress": progress, "param_groups": opt["param_groups"], "optim_scalars": scalars}
    atomic_write_text(progress_file, json.dumps(meta, indent=2))


def _read(file: Path, stamp: str) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise TrainStateError(f"resume state incomplete: {file} is missing; delete the resume folder to start over")
    with safe_open(str(file), "pt") as f:
        saved = (f.metadata() or {}).get("stamp")
    if saved != stamp:
        raise TrainStateError(
            f"resume state {file} belongs to another epoch ({saved}) than its progress file ({stamp}): training "
            "was stopped while it saved; delete the resume folder to start the phase over"
        )
    return load_file(str(file))


def load_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what ``save_train_state`` wrote; returns the saved progress."""
    weights_file, optim_file, progress_file = state_files(path)
    if not progress_file.is_file():
        raise TrainStateError(f"resume state incomplete: {progress_file} is missing")
    meta = json.loads(progress_file.read_text())
    stamp = _stamp(meta["progress"])
    weights, optim = _read(weights_file, stamp), _read(optim_file, stamp)
    model.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, Any]] = {}
    for k, v in optim.items():
        _, pid, name = k.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for k, v in meta["optim_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(weights["rng.cpu"])
    return meta["progress"]


def remove_train_state(path: Path) -> None:
    """Delete the state at ``path`` (a finished phase)."""
    for file in state_files(path):
        file.unlink(missing_ok=True)
