"""Running an export with onnxruntime and numpy only (no torch): a branch stage by stage,
and the exit heads."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import array_api_compat.numpy
import numpy as np
import onnxruntime as ort

from distree.exits import ExitOutput, StudentMacs
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
from distree.inference.local import LocalModel, ModelParts
from distree.policies import DEFAULT_POLICY
from distree.policies.calibration_file import CalibrationFile, read_calibration_file

#: Where a session runs unless told otherwise: every onnxruntime build has it.
CPU_PROVIDERS = ("CPUExecutionProvider",)


def check_providers(requested: Sequence[str] | None) -> list[str]:
    """The execution providers a session is to try, in order (``--providers``): the CPU's
    unless given; each given one must be in this onnxruntime build, or a ValueError names
    those that are."""
    if not requested:
        return list(CPU_PROVIDERS)
    available = ort.get_available_providers()
    missing = [p for p in requested if p not in available]
    if missing:
        raise ValueError(
            f"this onnxruntime has no {', '.join(missing)}; it has {', '.join(available)} "
            "(another build of onnxruntime brings others, e.g. onnxruntime-gpu)"
        )
    return list(requested)


def session(path: Path, threads: int | None = None, providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session for one exported file, on ``providers`` (default the CPU)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=check_providers(providers))


class OrtBranch:
    """One branch of an export: ``run_stage`` as ``distree.models.Branch.run_stage``, on
    numpy arrays."""

    def __init__(
        self,
        export_dir: str | Path,
        branch: int,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ):
        self.dir = Path(export_dir)
        self.manifest: ExportManifest = read_manifest(self.dir)
        if not 0 <= branch < self.manifest.num_branches:
            raise ValueError(f"branch must be in 0..{self.manifest.num_branches - 1} for {self.dir}, got {branch}")
        self.branch = branch
        self.stages = self.manifest.stages[branch]
        self._sessions = [session(self.dir / s.file, threads, providers) for s in self.stages]

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

    def __init__(self, export_dir: str | Path, threads: int | None = None, providers: Sequence[str] | None = None):
        self.dir = Path(export_dir)
        self.manifest = read_manifest(self.dir)
        self._sessions = [session(self.dir / h.file, threads, providers) for h in self.manifest.heads]

    @property
    def macs(self) -> StudentMacs:
        """The export's per-sample MACs, as its run counted them."""
        m = self.manifest
        return StudentMacs([[s.macs for s in per] for per in m.stages], [h.macs for h in m.heads])

    def read_calibration(self) -> CalibrationFile | None:
        """The calibration the run had when exported (None: it had none)."""
        return read_calibration_file(self.dir / self.manifest.calibration) if self.manifest.calibration else None

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


def load_export(
    export_dir: str | Path,
    policy: str = DEFAULT_POLICY,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> LocalModel:
    """An export run in this process with onnxruntime and numpy, no torch: every branch
    in turn, the exit heads, and the calibration the run had when exported."""
    heads = OrtHeads(export_dir, threads, providers)
    m = heads.manifest
    parts = ModelParts(
        branches=[OrtBranch(export_dir, b, threads, providers) for b in range(m.num_branches)],
        fusion=heads,
        macs=heads.macs,
        classes=list(m.classes),
        input_shape=m.input_shape,
        calibration=heads.read_calibration(),
    )
    return LocalModel(parts, policy)
