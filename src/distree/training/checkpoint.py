"""Training state as safetensors plus JSON: weights, optimizer state and progress, no pickles.

A phase's state is a progress file and two tensor files named after the epoch they hold,
so that each stays small enough to commit (a run that spans sessions commits its state;
a WRN-16-3 teacher's weights and its momentum are 6.2 MB each, 12.4 MB together):

    PHASE.json                      progress, the optimizer's settings and scalars, and
                                    the names of the two files below
    PHASE-eN.safetensors            the module's weights and the RNG state after epoch N
    PHASE-eN.optim.safetensors      the optimizer's tensors (momentum buffers)

The progress file is written last, atomically, and is what a resume reads: a process
killed while saving epoch N+1 leaves the progress file naming epoch N's files, which are
removed only after it names the new ones. Both tensor files also carry the progress in
their metadata, checked on load.
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


class TimeLimitReached(Exception):
    """Training stopped cleanly because going on would pass the deadline.

    What was done is on disk (the resume state of the last finished epoch, or the
    teacher's outputs computed so far): the same command continues.
    """


class TrainStateError(RuntimeError):
    """The files of a resume state are missing or do not belong together."""


def progress_file(resume_dir: Path, phase: str) -> Path:
    """The file whose presence means ``phase`` has a state to resume from."""
    return resume_dir / f"{phase}.json"


def _stamp(progress: dict[str, Any]) -> str:
    return json.dumps(progress, sort_keys=True)


def _phase_files(resume_dir: Path, phase: str) -> list[Path]:
    """Every tensor file (or unfinished temporary) of ``phase`` in ``resume_dir``."""
    return sorted(resume_dir.glob(f"{phase}-e*.safetensors*"))


def save_train_state(
    resume_dir: Path,
    phase: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save weights and RNG state, optimizer state and ``extra`` tensors (safetensors) and
    ``progress`` (JSON, with ``epochs_done``), then remove the phase's older tensor files."""
    resume_dir.mkdir(parents=True, exist_ok=True)
    opt = optimizer.state_dict()
    weights = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights.update({f"extra.{k}": v.detach().contiguous().cpu() for k, v in (extra or {}).items()})
    weights["rng.cpu"] = torch.get_rng_state()
    optim: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in opt["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                optim[f"optim.{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    base = f"{phase}-e{progress['epochs_done']}"
    files = {"weights": f"{base}.safetensors", "optimizer": f"{base}.optim.safetensors"}
    stamp = {"stamp": _stamp(progress)}
    for key, tensors in (("weights", weights), ("optimizer", optim)):
        tmp = resume_dir / f"{files[key]}.tmp{os.getpid()}"
        save_file(tensors, str(tmp), metadata=stamp)
        os.replace(tmp, resume_dir / files[key])
    meta = {"progress": progress, "files": files, "param_groups": opt["param_groups"], "optim_scalars": scalars}
    atomic_write_text(progress_file(resume_dir, phase), json.dumps(meta, indent=2))
    for f in _phase_files(resume_dir, phase):
        if f.name not in files.values():
            f.unlink(missing_ok=True)


def _read(file: Path, stamp: str) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise TrainStateError(f"resume state incomplete: {file} is missing; delete the resume folder to start over")
    with safe_open(str(file), "pt") as f:
        saved = (f.metadata() or {}).get("stamp")
    if saved != stamp:
        raise TrainStateError(
            f"resume state {file} holds another epoch ({saved}) than its progress file says ({stamp}); "
            "delete the resume folder to start the phase over"
        )
    return load_file(str(file))


def load_train_state(
    resume_dir: Path,
    phase: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Restore what ``save_train_state`` wrote, the ``extra`` tensors copied into the ones
    given (the same names, strictly); returns the saved progress."""
    meta = json.loads(progress_file(resume_dir, phase).read_text())
    if "files" not in meta:
        raise TrainStateError(
            f"{progress_file(resume_dir, phase)} is a resume state of an earlier distree (one file for weights "
            "and optimizer); delete the resume folder to start the phase over"
        )
    stamp = _stamp(meta["progress"])
    weights = _read(resume_dir / meta["files"]["weights"], stamp)
    optim = _read(resume_dir / meta["files"]["optimizer"], stamp)
    model.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")}, strict=True)
    saved_extra = {k[6:]: v for k, v in weights.items() if k.startswith("extra.")}
    if set(saved_extra) != set(extra or {}):
        raise TrainStateError(
            f"resume state of {phase} holds extra tensors {sorted(saved_extra)}, this run needs "
            f"{sorted(extra or {})}: it was saved with other training settings; delete the resume folder"
        )
    for k, v in saved_extra.items():
        extra[k].copy_(v)
    state: dict[int, dict[str, Any]] = {}
    for k, v in optim.items():
        _, pid, name = k.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for k, v in meta["optim_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as err:
        raise TrainStateError(
            f"{progress_file(resume_dir, phase)} holds an optimizer state of other parameter groups ({err}): saved "
            "by an earlier distree or with other settings; delete the resume folder to start the phase over"
        ) from None
    for group in optimizer.param_groups:
        group.setdefault("lr_scale", 1.0)
    torch.set_rng_state(weights["rng.cpu"])
    return meta["progress"]


def remove_train_state(resume_dir: Path, phase: str) -> None:
    """Delete ``phase``'s state (the phase finished): the progress file first, so that a
    state is never half there."""
    progress_file(resume_dir, phase).unlink(missing_ok=True)
    for f in _phase_files(resume_dir, phase):
        f.unlink(missing_ok=True)
