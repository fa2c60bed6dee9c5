"""What the coordinator serves: the exit heads as a fusion, what each stage and head
costs, the input's shape and the calibration, from a run (the heads in PyTorch) or from an
ONNX export (the heads in onnxruntime, and no torch in the process).

The stage loop, the policies and the protocol are the same either way; only where the
heads run differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distree.exits import StudentMacs
from distree.inference.stage_loop import Fusion
from distree.policies.calibration_file import CalibrationFile

#: Where the coordinator runs the exit heads: a run's weights in PyTorch, or an export's
#: ONNX files in onnxruntime.
HEAD_BACKENDS = ("torch", "onnxruntime")
HeadBackend = Literal["torch", "onnxruntime"]


@dataclass(frozen=True)
class ServedModel:
    """The model as the coordinator sees it."""

    source: Path  # the run or export directory, for messages
    fusion: Fusion
    macs: StudentMacs
    input_shape: tuple[int, int, int]  # (C, H, W), uint8
    classes: list[str]
    branch_fingerprints: list[str]  # what a worker serving branch b must report
    calibration: CalibrationFile | None
    #: Said with a policy that has no thresholds here: how this kind of source gets them.
    calibration_hint: str = "run 'distree calibrate' on the run"

    @property
    def num_branches(self) -> int:
        return len(self.macs.stage)

    @property
    def num_exits(self) -> int:
        return len(self.macs.head)


def served_model(
    source: str | Path, backend: HeadBackend = "torch", threads: int = 1, providers: Sequence[str] | None = None
) -> ServedModel:
    """The model of a run directory (``torch``) or of an export directory (``onnxruntime``,
    on its execution ``providers``, default the CPU), its heads computing on ``threads``
    threads.

    One by default: the heads are a few thousand MACs a row, run inline on the event loop,
    and a pool of threads per core spins against the gRPC work and any neighbour process
    (bench/runtime/contended.py measures the cluster beside a busy one).
    """
    if backend == "torch":
        if providers:
            raise ValueError("execution providers are onnxruntime's: give them with --backend onnxruntime")
        return _from_run(Path(source), threads)
    if backend == "onnxruntime":
        return _from_export(Path(source), threads, providers)
    raise ValueError(f"the heads' backend must be one of {', '.join(HEAD_BACKENDS)}, got {backend!r}")


def _from_run(path: Path, threads: int) -> ServedModel:
    import torch

    from distree.models import HeadFusion
    from distree.run import RunDir
    from distree.weights import load_weights

    torch.set_num_threads(threads)
    run = RunDir(path)
    meta = run.meta
    student = run.build_student(meta)
    # Only the heads' weights: the branches live on the devices.
    load_weights(student.heads, run.student_file, prefix="heads.")
    student.eval()
    return ServedModel(
        source=path,
        fusion=HeadFusion(student.heads),
        macs=student.macs,
        input_shape=(meta.data.in_channels, meta.data.image_size, meta.data.image_size),
        classes=meta.data.classes,
        branch_fingerprints=[run.branch_fingerprint(b) for b in range(student.num_branches)],
        calibration=run.read_calibration(),
    )


def _from_export(path: Path, threads: int, providers: Sequence[str] | None) -> ServedModel:
    try:
        from distree.export.ort import OrtHeads
    except ImportError as err:  # onnxruntime is an extra
        raise ImportError(
            f"--backend onnxruntime needs onnxruntime ({err.name} is not installed): pip install 'distree[onnx]'"
        ) from None

    heads = OrtHeads(path, threads=threads, providers=providers)
    m = heads.manifest
    return ServedModel(
        source=path,
        fusion=heads,
        macs=heads.macs,
        input_shape=m.input_shape,
        classes=m.classes,
        branch_fingerprints=m.branch_fingerprints,
        calibration=heads.read_calibration(),
        calibration_hint="an export carries the calibration its run had when exported: calibrate the run, "
        "then export it again",
    )
