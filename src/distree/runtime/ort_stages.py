"""The onnxruntime backend of a worker: one branch of an export (``distree export``), with
numpy and onnxruntime only: a process serving it never imports torch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distree.export.manifest import read_manifest
from distree.export.ort import CPU_PROVIDERS, OrtBranch, check_providers


class OrtStages:
    """``StageBackend`` on onnxruntime: stage 0's graph normalises the images itself."""

    def __init__(
        self,
        export_dir: str | Path,
        branch: int,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ):
        self.export_dir, self.branch, self.threads = Path(export_dir), branch, threads
        self.providers = check_providers(providers)
        self._ort: OrtBranch | None = None
        # Read now, so that a wrong directory or branch fails before the server starts.
        manifest = read_manifest(self.export_dir)
        if not 0 <= branch < manifest.num_branches:
            raise ValueError(f"--branch must be in 0..{manifest.num_branches - 1} for {export_dir}, got {branch}")
        self.num_stages = manifest.num_exits
        self.input_shape = manifest.input_shape
        self.stage_macs = [s.macs for s in manifest.stages[branch]]
        # The weights it was exported from: the coordinator checks them as a torch worker's.
        self.fingerprint = manifest.branch_fingerprints[branch]
        on = "" if self.providers == list(CPU_PROVIDERS) else f" on {', '.join(self.providers)}"
        self.description = f"onnxruntime {manifest.precision}{on}"

    def load(self) -> None:
        """Open every stage's session and run each once."""
        self._ort = OrtBranch(self.export_dir, self.branch, self.threads, self.providers)
        self._ort.pooled(np.zeros((1, *self.input_shape), dtype=np.uint8))

    def as_input(self, images: np.ndarray) -> np.ndarray:
        return images

    def compute(self, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self._ort is not None, "load() first"
        h, v = self._ort.run_stage(k, np.ascontiguousarray(x))
        return h, v

    def cat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    def split(self, x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
        return np.split(x, np.cumsum(sizes)[:-1])
