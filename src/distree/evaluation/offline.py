"""``distree eval``: accuracy and computation of a trained run on the test split."""

from __future__ import annotations

from itertools import combinations
from statistics import mean

import torch

from distree.data.dataset import ImageSet
from distree.evaluation.predict import accuracy, branch_vectors, fuse_exits, teacher_logits
from distree.models.macs import count_macs
from distree.run import RunDir


def evaluate_run(run: RunDir, test: ImageSet, device: torch.device, batch_size: int = 512) -> dict:
    """Teacher, per-exit, full-execution and k-of-N-branches results as a JSON-ready dict.

    Computation is MACs per sample (FlopCounterMode FLOPs / 2), cumulative per exit: the
    stages of every branch up to that exit plus every exit head on the way.
    """
    meta = run.read_meta()
    if test.image_shape != (meta.data.in_channels, meta.data.image_size, meta.data.image_size):
        raise ValueError(
            f"the test images are {test.image_shape} but {run.path} was trained on "
            f"({meta.data.in_channels}, {meta.data.image_size}, {meta.data.image_size})"
        )
    if len(test.classes) != len(meta.data.classes):
        raise ValueError(f"the data set has {len(test.classes)} classes, the run {len(meta.data.classes)}")
    norm = meta.data.normalization
    teacher = run.load_teacher().to(device)
    student = run.load_student().to(device)
    x1 = torch.zeros(1, meta.data.in_channels, meta.data.image_size, meta.data.image_size, device=device)
    teacher_macs = count_macs(lambda: teacher(x1))
    t_logits = teacher_logits(teacher, test.images, norm, batch_size, device)
    vectors = branch_vectors(student, test.images, norm, batch_size, device)
    all_exits = fuse_exits(student, vectors)
    exit_acc = accuracy(all_exits.logits, test.labels)
    macs = student.macs
    n = student.num_branches
    devices_present: dict[str, float] = {}
    devices_detail: dict[str, dict[str, float]] = {}
    for k in range(1, n + 1):
        per_subset = {}
        for subset in combinations(range(n), k):
            rec = fuse_exits(student, vectors, subset)
            per_subset[",".join(map(str, subset))] = round(accuracy(rec.logits[-1], test.labels), 4)
        devices_present[str(k)] = round(mean(per_subset.values()), 4)
        devices_detail[str(k)] = per_subset
    return {
        "run": str(run.path),
        "test_samples": len(test),
        "macs_note": "multiply-accumulates per sample = torch.utils.flop_counter FLOPs / 2",
        "teacher": {"accuracy": round(accuracy(t_logits, test.labels), 4), "macs_per_sample": teacher_macs},
        "exits": [
            {"accuracy": round(a, 4), "macs_per_sample": macs.exit_cumulative(e)} for e, a in enumerate(exit_acc)
        ],
        "full": {"accuracy": round(exit_acc[-1], 4), "macs_per_sample": macs.full()},
        "devices_present": devices_present,
        "devices_present_subsets": devices_detail,
        "stage_macs": macs.stage,
        "head_macs": macs.head,
    }


def format_report(r: dict) -> str:
    """Human-readable table of ``evaluate_run``'s result."""
    full = r["full"]["macs_per_sample"]
    lines = [
        f"test samples: {r['test_samples']}   (computation: MACs per sample)",
        f"teacher            accuracy {r['teacher']['accuracy']:.2%}   {r['teacher']['macs_per_sample'] / 1e6:9.2f} M",
        f"student full       accuracy {r['full']['accuracy']:.2%}   {full / 1e6:9.2f} M",
    ]
    for e, ex in enumerate(r["exits"]):
        lines.append(
            f"  exit {e}           accuracy {ex['accuracy']:.2%}   {ex['macs_per_sample'] / 1e6:9.2f} M"
            f"  ({ex['macs_per_sample'] / full:.0%} of full)"
        )
    lines.append("branches present (full execution, mean over subsets):")
    for k, acc in r["devices_present"].items():
        lines.append(f"  {k} of {len(r['devices_present'])}           accuracy {acc:.2%}")
    return "\n".join(lines)
