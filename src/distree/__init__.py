"""distree: distributed early-exit DNN inference on edge devices."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from distree.inference.local import LocalModel


def load(
    path, policy: str | None = None, *, providers: list[str] | None = None, threads: int | None = None
) -> LocalModel:
    """A trained model ready to classify in this process:
    ``distree.load("models/fashion-mnist").infer(["shoe.png"])``.

    ``path``: a run directory (PyTorch) or a ``distree export`` directory (onnxruntime and
    numpy only: a board's install, no torch). ``policy``: the exit policy (default: the
    runtime's default), with the calibrated thresholds. ``providers``: an export's
    onnxruntime execution providers in order of preference (default the CPU); ``threads``
    its sessions' compute threads (default onnxruntime's choice).
    """
    from pathlib import Path

    from distree.defaults import DEFAULT_POLICY
    from distree.export.manifest import MANIFEST

    policy = policy or DEFAULT_POLICY
    if (Path(path) / MANIFEST).is_file():
        try:
            from distree.export.ort import load_export  # onnxruntime: imported only when a model is loaded
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                f"{path} is an export, which runs on onnxruntime ({err.name} is not installed): "
                "pip install 'distree[onnx]'",
                name=err.name,
            ) from None
        return load_export(path, policy, providers=providers, threads=threads)
    if providers or threads:
        raise ValueError(f"{path} is a run directory, which runs in PyTorch: providers and threads are for an export")
    from distree.inference.local import LocalModel

    try:
        return LocalModel.from_run(path, policy)
    except ModuleNotFoundError as err:
        if err.name not in ("torch", "safetensors"):
            raise
        raise ModuleNotFoundError(
            f"{path} is a run directory, which runs in PyTorch ({err.name} is not installed): "
            "pip install 'distree[torch]', or load an export of it ('distree export') with distree[onnx]",
            name=err.name,
        ) from None
