"""distree: distributed early-exit DNN inference on edge devices."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from distree.inference.local import LocalModel


def load(run_dir, policy: str | None = None) -> LocalModel:
    """A trained run ready to classify in this process:
    ``distree.load("models/fashion-mnist").infer(["shoe.png"])``. ``policy``: the exit
    policy (default: the runtime's default), with the run's calibrated thresholds."""
    from distree.inference.local import LocalModel  # torch: imported only when a model is loaded

    return LocalModel(run_dir) if policy is None else LocalModel(run_dir, policy)
