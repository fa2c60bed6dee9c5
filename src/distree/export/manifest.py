"""manifest.json of an export: what the ONNX files are, which run they came from, and how
they are called. Read without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

MANIFEST = "manifest.json"
#: The copy of the run's calibration.json in an export.
CALIBRATION_FILE = "calibration.json"

#: Names every exported file is called with. Stage 0 takes the raw images (its graph
#: normalises them, as the torch worker does); a later stage takes the feature map the
#: previous one returned as ``next_state``, as its ``state``.
IMAGES, STATE, NEXT_STATE, POOLED = "images", "state", "next_state", "pooled"
PRESENT, EMBEDDING, LOGITS, AGREEMENT = "present", "embedding", "logits", "agreement"


def pooled_input(branch: int) -> str:
    """The name of a head's input for branch ``branch``'s pooled vector."""
    return f"{POOLED}_{branch}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageFile(_Model):
    """One branch stage: input ``images`` (uint8 (B, C, H, W)) for stage 0, else ``state``;
    outputs ``next_state`` (the feature map kept for the next stage) and ``pooled`` (B, dim),
    the vector the coordinator fuses."""

    file: str
    macs: int  # per input
    dim: int  # of the pooled vector


class HeadFile(_Model):
    """One exit head: inputs ``pooled_0`` .. ``pooled_{N-1}`` (B, dim_b) float32 and
    ``present`` (B, N) bool (a branch that did not answer: any values, present False);
    outputs ``embedding`` (B, D), ``logits`` (B, K), ``agreement`` (B,). Always fp32."""

    file: str
    macs: int


class Int8Calibration(_Model):
    """What the int8 quantisation's activation ranges were measured on."""

    split: Literal["validation"] = "validation"
    samples: int
    method: str  # onnxruntime.quantization's calibration method


class ExportManifest(_Model):
    """Contents of EXPORT/manifest.json."""

    format: Literal["onnx"] = "onnx"
    precision: Literal["fp32", "int8"]
    opset: int
    run: str  # the run directory it was exported from, as given
    fingerprint: str  # of the student's architecture and weights (``distree.weights.fingerprint``)
    branch_fingerprints: list[str]  # what a worker serving branch b reports in Info
    input_shape: tuple[int, int, int]  # (C, H, W), uint8
    mean: tuple[float, ...]  # the normalisation stage 0 applies, on the 0..1 scale
    std: tuple[float, ...]
    classes: list[str]
    exit_points: list[int]
    stages: list[list[StageFile]]  # [branch][stage]
    heads: list[HeadFile]  # [exit]
    int8_calibration: Int8Calibration | None = None
    #: A copy of the run's calibration.json (the thresholds fitted on the run's torch
    #: outputs), which a coordinator serving the export reads; None if the run had none.
    calibration: str | None = None

    @property
    def num_branches(self) -> int:
        return len(self.stages)

    @property
    def num_exits(self) -> int:
        return len(self.heads)


def read_manifest(export_dir: str | Path, run=None) -> ExportManifest:
    """Parse EXPORT/manifest.json, naming the file and the bad field; every file it lists
    must exist. With ``run`` (a ``RunDir``), refuse an export of other weights than its."""
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {export_dir} a 'distree export' directory?")
    try:
        manifest = ExportManifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as err:
        raise ValueError(f"{path}: {err}") from None
    files = [s.file for per in manifest.stages for s in per] + [h.file for h in manifest.heads]
    files += [manifest.calibration] if manifest.calibration else []
    missing = [f for f in files if not (Path(export_dir) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lists files that are missing: {', '.join(missing[:5])}")
    if run is not None and manifest.fingerprint != run.student_fingerprint():
        raise ValueError(f"{export_dir} was exported from other weights than {run.path}'s (export it again)")
    return manifest
