"""Running an export with onnxruntime and numpy only (no torch): a branch stage by stage,
and the exit heads."""

from __future__ import annotations

from pathlib import Path

import array_api_compat.numpy
import numpy as np
import onnxruntime as ort

from distree.exits import ExitOutput
from distree.export.manifest import (
    AGREEMENT,
    EMBEDDING,
    IMAGES,
    LOGITS,
    NEXT_STATE,
    POOLED,
    PRESENT,
    STATE,
    ExportManifest,
    pooled_input,
    read_manifest,
)


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """An onnxruntime CPU session for one exported file."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtBranch:
    """One branch of an export: ``run_stage`` as ``distree.models.Branch.run_stage``, on
    numpy arrays."""

    def __init__(self, export_dir: str | Path, branch: int, threads: int | None = None):
        self.dir = Path(export_dir)
        self.manifest: ExportManifest = read_manifest(self.dir)
        if not 0 <= branch < self.manifest.num_branches:
            raise ValueError(f"branch must be in 0..{self.manifest.num_branches - 1} for {self.dir}, got {branch}")
        self.branch = branch
        self.stages = self.manifest.stages[branch]
        self._sessions = [session(self.dir / s.file, threads) for s in self.stages]

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def run_stage(self, k: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stage ``k`` on uint8 images (B, C, H, W) for k = 0, else on the feature map stage
        k-1 returned: (feature map for stage k+1, pooled vector (B, dim) float32)."""
        name = IMAGES if k == 0 else STATE
        h, v = self._sessions[k].run([NEXT_STATE, POOLED], {name: x})
        return h, v

    def pooled(self, images: np.ndarray) -> list[np.ndarray]:
        """Every stage in turn on uint8 images (B, C, H, W): the pooled vector of each."""
        out, h = [], images
        for k in range(self.num_stages):
            h, v = self.run_stage(k, h)
            out.append(v)
        return out


class OrtHeads:
    """The exit heads of an export: fuse whichever branches answered. Called as the stage
    loop calls a fusion (``distree.inference.stage_loop.Fusion``), on numpy arrays."""

    xp = array_api_compat.numpy

    def __init__(self, export_dir: str | Path, threads: int | None = None):
        self.dir = Path(export_dir)
        self.manifest = read_manifest(self.dir)
        self._sessions = [session(self.dir / h.file, threads) for h in self.manifest.heads]

    def run(self, e: int, vectors: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exit ``e`` on one pooled vector (B, dim_b) per branch, None where a branch is
        absent: (embedding (B, D), logits (B, K), agreement (B,))."""
        m = self.manifest
        if len(vectors) != m.num_branches or all(v is None for v in vectors):
            raise ValueError(f"exit {e} needs {m.num_branches} entries with at least one vector")
        rows = next(v for v in vectors if v is not None).shape[0]
        feeds: dict[str, np.ndarray] = {PRESENT: np.tile(np.array([v is not None for v in vectors]), (rows, 1))}
        for b, v in enumerate(vectors):
            dim = m.stages[b][e].dim
            feeds[pooled_input(b)] = np.zeros((rows, dim), np.float32) if v is None else v.astype(np.float32)
        z, logits, agreement = self._sessions[e].run([EMBEDDING, LOGITS, AGREEMENT], feeds)
        return z, logits, agreement

    def __call__(self, k: int, vectors: list[np.ndarray | None], agreement: bool) -> ExitOutput:
        z, logits, agree = self.run(k, vectors)
        return ExitOutput(z, logits, agree if agreement else None)
