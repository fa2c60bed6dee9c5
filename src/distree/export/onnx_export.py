"""``distree export``: a trained run as ONNX files, one per branch stage and per exit head,
with a manifest; optionally int8 stages, calibrated on the validation split.

Each file is the model's own code traced (``Branch.run_stage``, ``ExitHead.project`` and
``fuse``) by torch's ONNX exporter, with fixed input and output names and a dynamic batch
axis. A branch is traced once and cut into its stages (a trace costs seconds; a cut
nothing); each head is traced on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.utils import Extractor
from torch import nn

from distree.data.augment import Normalization
from distree.export.manifest import (
    AGREEMENT,
    CALIBRATION_FILE,
    EMBEDDING,
    IMAGES,
    LOGITS,
    MANIFEST,
    NEXT_STATE,
    POOLED,
    PRESENT,
    STATE,
    ExportManifest,
    HeadFile,
    Int8Calibration,
    StageFile,
    pooled_input,
)
from distree.models import Branch, DistrEEStudent
from distree.models.heads import ExitHead
from distree.run import RunDir, with_precision

OPSET = 18
CALIBRATION_BATCH = 64


class _Branch(nn.Module):
    """Every stage of a branch as a worker runs them (stage 0 normalises uint8 images),
    returning each stage's state and pooled vector: one trace, cut into stages after."""

    def __init__(self, branch: Branch, norm: Normalization):
        super().__init__()
        self.branch, self.norm = branch, norm

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, h = [], self.norm(images)
        for k in range(self.branch.num_stages):
            h, v = self.branch.run_stage(k, h)
            out += [h, v]
        return tuple(out)


class _Head(nn.Module):
    """An exit head over every branch's vector at its exit (B, dim_b) and a presence mask
    (B, N)."""

    def __init__(self, head: ExitHead):
        super().__init__()
        self.head = head

    def forward(self, pooled: tuple[torch.Tensor, ...], present: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fused = self.head.fuse(*self.head.project(list(pooled), present))
        return fused.embedding, fused.logits, fused.agreement


@contextlib.contextmanager
def _quiet_exporter():
    """torch's exporter warns, on every call, about its own internals (torchvision's ops
    not registered, deprecated pytree classes, merged axis names): nothing about the model
    a user can act on, and it would bury the export's own log."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*")
            yield
    finally:
        logger.setLevel(level)


def _trace(module: nn.Module, args: tuple, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """``module`` on ``args`` as ONNX, every input's first axis the (dynamic) batch."""
    batch = torch.export.Dim("batch")
    shapes = tuple(
        tuple({0: batch} for _ in a) if isinstance(a, tuple) else {0: batch} for a in args
    )  # fmt: skip
    module.eval()
    with tempfile.TemporaryDirectory() as tmp, _quiet_exporter():
        path = Path(tmp) / "whole.onnx"
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            verbose=False,
        )
        return onnx.load(str(path))


def _cut(whole: onnx.ModelProto, names: dict[str, str], inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """The part of ``whole`` from ``inputs`` to ``outputs``, its inputs and outputs renamed
    by ``names`` (trace name -> the name the file is called with)."""
    part = Extractor(whole).extract_model(inputs, outputs)
    for node in part.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for value in [*part.graph.input, *part.graph.output]:
        value.name = names.get(value.name, value.name)
    onnx.checker.check_model(part)
    return part


def export_onnx(
    run: RunDir,
    out: Path,
    *,
    int8_images: torch.Tensor | None = None,
    log: Callable[[str], None] = logging.getLogger("distree.export").info,
) -> ExportManifest:
    """Export ``run``'s student into ``out``. With ``int8_images`` (uint8 validation images),
    every branch stage is quantised to int8 (QDQ, per-channel weights), its activation ranges
    measured on those images; the heads stay fp32 (they are a small part of the MACs)."""
    meta = run.meta
    student: DistrEEStudent = run.load_student().eval()
    norm = meta.data.normalization
    c, s = meta.data.in_channels, meta.data.image_size
    n, exits = student.num_branches, student.num_exits
    out.mkdir(parents=True, exist_ok=True)
    macs = student.macs
    stages: list[list[StageFile]] = []
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        for b, branch in enumerate(student.branches):
            traced = [name for k in range(exits) for name in (f"{NEXT_STATE}_{k}", f"{POOLED}_{k}")]
            whole = _trace(_Branch(branch, norm), (torch.zeros(2, c, s, s, dtype=torch.uint8),), [IMAGES], traced)
            calib = int8_images
            per = []
            for k in range(exits):
                first = IMAGES if k == 0 else f"{NEXT_STATE}_{k - 1}"
                names = {first: IMAGES if k == 0 else STATE, f"{NEXT_STATE}_{k}": NEXT_STATE, f"{POOLED}_{k}": POOLED}
                part = _cut(whole, names, [first], [f"{NEXT_STATE}_{k}", f"{POOLED}_{k}"])
                name = f"branch{b}_stage{k}.onnx"
                if calib is None:
                    onnx.save(part, str(out / name))
                else:  # the fp32 cut is only the quantiser's input
                    fp32 = Path(tmp) / name
                    onnx.save(part, str(fp32))
                    name = f"branch{b}_stage{k}.int8.onnx"
                    _quantize(fp32, out / name, names[first], calib)
                    x = norm(calib) if k == 0 else calib
                    calib = torch.cat([branch.run_stage(k, p)[0] for p in x.split(CALIBRATION_BATCH)])
                per.append(StageFile(file=name, macs=macs.stage[b][k], dim=branch.out_dims[k]))
            stages.append(per)
            log(f"branch {b}: {', '.join(f.file for f in per)}")
        heads = []
        inputs = [pooled_input(b) for b in range(n)] + [PRESENT]
        for e, head in enumerate(student.heads):
            pooled = tuple(torch.zeros(2, br.out_dims[e]) for br in student.branches)
            present = torch.ones(2, n, dtype=torch.bool)
            model = _trace(_Head(head), (pooled, present), inputs, [EMBEDDING, LOGITS, AGREEMENT])
            onnx.save(model, str(out / f"head{e}.onnx"))
            heads.append(HeadFile(file=f"head{e}.onnx", macs=macs.head[e]))
        log(f"heads: {', '.join(h.file for h in heads)}")
    calibration = None
    if run.calibration_file.is_file():
        calibration = CALIBRATION_FILE
        shutil.copyfile(run.calibration_file, out / CALIBRATION_FILE)
    precision = "fp32" if int8_images is None else "int8"
    manifest = ExportManifest(
        precision=precision,
        opset=OPSET,
        run=str(run.path),
        fingerprint=run.student_fingerprint(),
        branch_fingerprints=[with_precision(run.branch_fingerprint(b), precision) for b in range(n)],
        input_shape=(c, s, s),
        mean=norm.mean,
        std=norm.std,
        classes=meta.data.classes,
        exit_points=meta.config.student.exit_points,
        stages=stages,
        heads=heads,
        int8_calibration=None if int8_images is None else Int8Calibration(samples=len(int8_images), method="MinMax"),
        calibration=calibration,
    )
    (out / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return manifest


def _quantize(fp32: Path, int8: Path, input_name: str, inputs: torch.Tensor) -> None:
    """Static int8 quantisation of one stage, its activation ranges from ``inputs``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = (p.numpy() for p in inputs.split(CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            part = next(self._it, None)
            return None if part is None else {input_name: part}

    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = fp32.with_suffix(".pre.onnx")
    # onnxruntime's own advice, logged on the root logger per file; done here instead.
    quant_pre_process(str(fp32), str(pre))
    quantize_static(
        str(pre),
        str(int8),
        _Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
