"""distree: distributed early-exit DNN inference on edge devices."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from distree.inference.local import LocalModel


def load(path, policy: str | None = None, *, providers: list[str] | None = None) -> LocalModel:
    """A trained model ready to classify in this process:
    ``distree.load("models/fashion-mnist").infer(["shoe.png"])``.

    ``path``: a run directory (PyTorch) or a ``distree export`` directory (onnxruntime and
    numpy only: a board's install, no torch). ``policy``: the exit policy (default: the
    runtime's default), with the calibrated thresholds. ``providers``: an export's
    onnxruntime execution providers in order of preference (default the CPU).
    """
    from pathlib import Path

    from distree.defaults import DEFAULT_POLICY
    from distree.export.manifest import MANIFEST

    policy = policy or DEFAULT_POLICY
    if (Path(path) / MANIFEST).is_file():
        from distree.export.ort import load_export  # onnxruntime: imported only when a model is loaded

        return load_export(path, policy, providers=providers)
    if providers:
        raise ValueError(f"{path} is a run directory, which runs in PyTorch: providers are for an export")
    from distree.inference.local import LocalModel  # torch: imported only when a model is loaded

    return LocalModel.from_run(path, policy)
