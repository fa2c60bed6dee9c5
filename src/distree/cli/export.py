"""``distree export``: a trained run as ONNX files for boards that serve a branch."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from distree.cli.args import COUNT
from distree.cli.args import log as _log


def cmd_export(args: argparse.Namespace) -> int:
    """Export every branch stage and exit head of a run."""
    from distree.data import load_data
    from distree.export.onnx_export import export_onnx
    from distree.run import RunDir

    if args.calibration_samples < 1:
        raise ValueError("--calibration-samples must be at least 1")
    run = RunDir(args.run_dir)
    meta = run.meta
    images = None
    if args.int8:
        if not args.data:
            raise ValueError("--int8 measures activation ranges on the validation split: give --data")
        splits = load_data(args.data, args.format, meta.config.data.val_fraction, meta.config.data.split_seed)
        images = splits.val.images[: args.calibration_samples]
        _log(f"int8: activation ranges from {len(images)} validation images")
    t0 = time.perf_counter()
    manifest = export_onnx(run, Path(args.out), int8_images=images, log=_log)
    files = sum(len(s) for s in manifest.stages) + len(manifest.heads)
    _log(
        f"wrote {files} files and manifest.json ({manifest.precision}) to {args.out} in {time.perf_counter() - t0:.0f}s"
    )
    return 0


def add_export_commands(sub, add_data_args) -> None:
    """Register ``export``."""
    p = sub.add_parser("export", help="export a run as ONNX: one file per branch stage and exit head")
    p.add_argument("run_dir", help="run directory made by 'distree train'")
    p.add_argument("--out", required=True, help="directory to write the files and manifest.json into")
    p.add_argument("--to", choices=["onnx"], default="onnx", help="export format (default onnx)")
    p.add_argument("--int8", action="store_true", help="quantise the branch stages to int8 (needs --data)")
    p.add_argument(
        "--calibration-samples",
        type=COUNT,
        default=512,
        help="with --int8: validation images the activation ranges are measured on (default 512)",
    )
    add_data_args(p)
    p.set_defaults(func=cmd_export)
