"""The run directory: one trained DistrEE model and everything needed to use it.

Layout::

    RUN/run.json             RunConfig + what the data looked like (shapes, classes, normalisation)
    RUN/teacher.safetensors  teacher weights
    RUN/student.safetensors  student weights (branches and exit heads)
    RUN/metrics.jsonl        one line per training epoch
    RUN/calibration.json     each policy's thresholds for a QoS target (distree calibrate)
    RUN/resume/              training state while a phase is unfinished
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from distree.config import RunConfig, parse_config
from distree.data.augment import Normalization
from distree.models import DistrEEStudent, Teacher, build_teacher
from distree.policies.calibration_file import CalibrationFile, read_calibration_file
from distree.provenance import Provenance
from distree.weights import atomic_write_text, fingerprint, load_weights


class DataInfo(BaseModel):
    """What the model was trained on: enough to build it and to preprocess inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    in_channels: int
    image_size: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    format: str
    source: str
    train_samples: int

    @property
    def normalization(self) -> Normalization:
        """The input normalisation fitted on the training split."""
        return Normalization(self.mean, self.std)


def with_precision(branch_fingerprint: str, precision: str) -> str:
    """A branch fingerprint for weights stored at ``precision``: ``WEIGHTS-INPUT`` as it is
    for full precision (fp32, what the run trained), ``WEIGHTS-INPUT-int8`` for an int8
    export, whose answers differ from the run's, so that a coordinator does not take one
    for the other."""
    return branch_fingerprint if precision == "fp32" else f"{branch_fingerprint}-{precision}"


def input_fingerprint(data: DataInfo) -> str:
    """A short hash of what a model's input must be: channels, size and normalisation."""
    described = json.dumps([data.in_channels, data.image_size, list(data.mean), list(data.std)])
    return hashlib.sha256(described.encode()).hexdigest()[:8]


class RunMeta(BaseModel):
    """Contents of run.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    config: RunConfig
    data: DataInfo
    teacher_from: str | None = None
    provenance: Provenance | None = None  # of the command that created the run


class RunDir:
    """Paths and loaders of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._meta: RunMeta | None = None

    meta_file = property(lambda self: self.path / "run.json")
    teacher_file = property(lambda self: self.path / "teacher.safetensors")
    student_file = property(lambda self: self.path / "student.safetensors")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    resume_dir = property(lambda self: self.path / "resume")
    calibration_file = property(lambda self: self.path / "calibration.json")

    def read_meta(self) -> RunMeta:
        """Parse run.json, naming the bad field when it is invalid."""
        if not self.meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a distree run directory (no run.json)")
        return parse_config(RunMeta, json.loads(self.meta_file.read_text()), str(self.meta_file))

    @property
    def meta(self) -> RunMeta:
        """run.json, parsed once per ``RunDir``."""
        if self._meta is None:
            self._meta = self.read_meta()
        return self._meta

    def write_meta(self, meta: RunMeta) -> None:
        """Write run.json."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.meta_file, json.dumps(meta.model_dump(mode="json"), indent=2) + "\n")
        self._meta = meta

    def student_fingerprint(self) -> str:
        """What identifies this run's student: its architecture and every weight (an export
        records it; evaluating an export checks it)."""
        return fingerprint(self.student_file, "", salt=self.meta.config.student.model_dump_json().encode())

    def branch_fingerprint(self, branch: int) -> str:
        """What identifies branch ``branch`` of this run's student, as ``WEIGHTS-INPUT``: a
        hash of its architecture, stage cut and weights, and one of what its input must be
        (shape and normalisation). A worker reports it; the coordinator refuses a worker
        whose differs, naming the part (``runtime.worker_link``)."""
        arch = self.meta.config.student.model_dump_json(include={"branches", "exit_points"}).encode()
        weights = fingerprint(self.student_file, f"branches.{branch}.", salt=arch + str(branch).encode())
        return f"{weights}-{input_fingerprint(self.meta.data)}"

    def read_calibration(self) -> CalibrationFile | None:
        """Parse calibration.json (None when the run is not calibrated), naming a bad field."""
        if not self.calibration_file.is_file():
            return None
        return read_calibration_file(self.calibration_file)

    def write_calibration(self, calibration: CalibrationFile) -> None:
        """Write calibration.json."""
        text = json.dumps(calibration.model_dump(mode="json"), indent=2) + "\n"
        atomic_write_text(self.calibration_file, text)

    def build_teacher(self, meta: RunMeta | None = None) -> Teacher:
        """An untrained teacher with this run's architecture."""
        meta = meta or self.meta
        return build_teacher(meta.config.teacher, meta.data.in_channels, len(meta.data.classes))

    def build_student(self, meta: RunMeta | None = None) -> DistrEEStudent:
        """An untrained student with this run's architecture."""
        meta = meta or self.meta
        return DistrEEStudent(meta.config.student, meta.data.in_channels, len(meta.data.classes), meta.data.image_size)

    def load_teacher(self) -> Teacher:
        """The trained teacher, in eval mode."""
        model = self.build_teacher()
        load_weights(model, self.teacher_file)
        return model.eval()

    def load_student(self) -> DistrEEStudent:
        """The trained student, in eval mode."""
        model = self.build_student()
        load_weights(model, self.student_file)
        return model.eval()
