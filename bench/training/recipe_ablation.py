"""The teacher recipe's ingredients one at a time: each variant trains a teacher
(``distree train --teacher-only``) with one ingredient of the fast recipe
(``configs/cifar10-cpu-fast.yaml``) taken out, or the earlier WideResNet recipe, and is
measured on the test split (``teacher_accuracy.measure``).

Every variant's run and result live under OUT/VARIANT/, so a later call skips what is
finished and continues a run that stopped at --time-limit. The table (accuracy, training
FLOPs, wall time of the epochs) is printed from every finished variant and written to
OUT/ablation.md and OUT/ablation.json.

Usage: python bench/training/recipe_ablation.py --data DATA --out DIR [--epochs 8]
           [--limit N] [--variants recipe,no-lookahead,...] [--time-limit MINUTES]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_accuracy import measure

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "configs" / "cifar10-cpu-fast.yaml"
#: The earlier recipe, for comparison: a WRN-16-2 teacher trained as distree trained it before.
EARLIER = [
    "teacher={depth: 16, width: 2}",
    "teacher_optim={epochs: 8, batch_size: 128, lr: 0.1, weight_decay: 5.0e-4, warmup_epochs: 1}",
    "data={val_fraction: 0.1, crop_padding: 4, flip: true}",
]
#: Variant -> the --set overrides that make it (over the fast recipe).
VARIANTS = {
    "recipe": [],
    "no-label-smoothing": ["teacher_optim.label_smoothing=0"],
    "no-lookahead": ["teacher_optim.lookahead_every=0"],
    "random-flips": ["data.alternate_flip=false"],
    "zero-padding": ["data.pad_mode=zeros"],
    "one-learning-rate": ["teacher_optim.norm_lr_scale=1"],
    "cosine-schedule": ["teacher_optim.schedule=cosine"],
    "earlier-recipe-wrn-16-2": EARLIER,
}


def _epochs(variant: str, epochs: int) -> list[str]:
    sets = [f"teacher_optim.epochs={epochs}"]
    if variant != "earlier-recipe-wrn-16-2":
        sets.append(f"teacher_optim.warmup_epochs={round(0.23 * epochs, 2)}")  # 23% of the steps, as airbench
    return sets


def _row(variant: str, r: dict) -> str:
    flops = 3 * 2 * r["macs_per_image"] * r["train_images"] * r["epochs"]  # forward + backward ~ 3 forwards
    minutes = r["epoch_seconds_total"] / 60
    return (
        f"| {variant} | {r['test']:.2%} | {r['test_tta']:.2%} | {r['macs_per_image'] / 1e6:.0f} M | "
        f"{flops / 1e15:.3f} | {minutes:.0f} min |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--limit", type=int, help="train on this many images (quicker, less accurate)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--time-limit", type=float, help="minutes for this call; a later call continues")
    args = ap.parse_args()
    deadline = None if args.time_limit is None else time.monotonic() + args.time_limit * 60
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        where = args.out / variant
        result_file = where / "teacher-accuracy.json"
        if not result_file.is_file():
            cmd = [sys.executable, "-m", "distree", "train", "--data", args.data, "--config", str(BASE)]
            cmd += ["--out", str(where / "run"), "--teacher-only"]
            for assignment in [*VARIANTS[variant], *_epochs(variant, args.epochs)]:
                cmd += ["--set", assignment]
            if args.limit:
                cmd += ["--limit", str(args.limit)]
            if deadline is not None:
                left = (deadline - time.monotonic()) / 60
                if left < 1:
                    print(f"{variant}: no time left; call again to continue", flush=True)
                    break
                cmd += ["--time-limit", f"{left:.1f}"]
            print(f"{variant}: {' '.join(cmd[1:])}", flush=True)
            done = subprocess.run(cmd, cwd=ROOT)
            if done.returncode == 3:  # the time limit: state kept
                print(f"{variant}: stopped at the time limit; call again to continue", flush=True)
                break
            if done.returncode != 0:
                return done.returncode
            result = measure(where / "run", args.data, splits=("test",))
            result["variant"], result["overrides"] = variant, VARIANTS[variant]
            result_file.write_text(json.dumps(result, indent=2) + "\n")
        results[variant] = json.loads(result_file.read_text())
    lines = [
        "| variant | test | test, TTA | MACs/image | training PFLOP | epochs' wall time |",
        "|---|---:|---:|---:|---:|---:|",
        *(_row(v, r) for v, r in results.items()),
    ]
    print("\n".join(lines))
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
