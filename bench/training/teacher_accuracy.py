"""A run's teacher on the validation and test splits, with and without test-time augmentation.

``distree eval`` measures a finished run (its student and teacher); this measures the
teacher alone, as soon as its phase has finished, e.g. to compare teacher recipes before
spending hours on a student. TTA averages the logits over the image, its mirror and both
shifted one pixel (``inference.records.teacher_logits``).

Usage: python bench/training/teacher_accuracy.py RUN --data DATA [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distree.data import load_data
from distree.evaluation.measures import accuracy
from distree.inference.records import teacher_logits
from distree.models.macs import count_macs
from distree.provenance import machine
from distree.run import RunDir


def _training_seconds(run: RunDir) -> float:
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines() if line.strip()]
    return round(sum(r["seconds"] for r in rows if r["phase"] == "teacher"), 1)


def measure(run_dir: Path, data: str, splits: tuple[str, ...] = ("val", "test"), log=print) -> dict:
    """The teacher of ``run_dir`` on ``splits``, with and without TTA, with what it cost."""
    run = RunDir(run_dir)
    meta = run.meta
    data_splits = load_data(data, None, meta.config.data.val_fraction, meta.config.data.split_seed)
    teacher = run.load_teacher()
    device = torch.device("cpu")
    x1 = torch.zeros(1, meta.data.in_channels, meta.data.image_size, meta.data.image_size)
    result = {
        "run": str(run_dir),
        "teacher": meta.config.teacher.model_dump(mode="json"),
        "macs_per_image": count_macs(lambda: teacher.eval()(x1)),
        "epochs": meta.config.teacher_optim.epochs,
        "train_images": meta.data.train_samples,
        "epoch_seconds_total": _training_seconds(run),
    }
    for split in splits:
        images, labels = getattr(data_splits, split).images, getattr(data_splits, split).labels
        for tta in (False, True):
            t0 = time.perf_counter()
            logits = teacher_logits(teacher, images, meta.data.normalization, meta.config.eval_batch_size, device, tta)
            key = f"{split}{'_tta' if tta else ''}"
            result[key] = round(accuracy(logits, labels), 4)
            result[f"{key}_seconds"] = round(time.perf_counter() - t0, 1)
            log(f"{key}: {result[key]:.2%} ({result[f'{key}_seconds']} s)")
    result["machine"] = machine()
    result["threads"] = torch.get_num_threads()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    result = measure(args.run, args.data)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
