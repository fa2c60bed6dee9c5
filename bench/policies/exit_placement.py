"""Where should exits sit? Compare exit sets of one trained student on the same samples.

A student trained with an exit after every residual block (e.g. configs/cifar10-cpu.yaml)
is evaluated as if only a subset of its exits existed: exits at the end of each residual
group only, versus every block. Each policy is calibrated on the validation split for the
same target and measured on the test split; computation counts only the heads of the
exits in use.

Usage: python bench/policies/exit_placement.py RUN_DIR --data PATH [--max-drop 0.5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from distree.evaluation.offline import record_val_test
from distree.models import ExitRecords
from distree.policies import exit_scores, make_policy
from distree.policies.calibration import calibrate, outcome
from distree.provenance import provenance
from distree.run import RunDir


def main() -> None:
    """Print one row per (exit set, policy)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data")
    ap.add_argument("--max-drop", type=float, default=0.5)
    ap.add_argument("--json", help="also write the rows, with the run, the seconds and provenance, here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    run = RunDir(args.run_dir)
    meta = run.read_meta()
    student, recs, labels = record_val_test(run, args.data, torch.device("cpu"))
    points = meta.config.student.exit_points
    n = meta.config.student.branches[0].blocks_per_group
    sets = {"every block": list(range(len(points))), "group ends": [i for i, p in enumerate(points) if p % n == 0]}
    macs = student.macs
    stage = [sum(macs.stage[b][e] for b in range(student.num_branches)) for e in range(len(points))]
    full = float(sum(stage) + macs.head[-1])
    print(f"run {run.path}: exit points {points}; target drop <= {args.max_drop} pp at 90% confidence")
    rows = []
    print(f"{'exits':<12}{'policy':<24}{'test acc':>9}{'test drop':>10}{'test saving':>12}")
    for name, keep in sets.items():
        # Stopping at kept exit j costs the stages up to it plus the kept heads on the way.
        costs = torch.tensor(
            [sum(stage[: e + 1]) + sum(macs.head[i] for i in keep if i <= e) for e in keep], dtype=torch.float64
        )
        for pol in ("feature-diff", "conf-then-feature-diff", "max-prob", "entropy"):
            policy = make_policy(pol)
            sc, ok = {}, {}
            for k, r in recs.items():
                sub = ExitRecords(*(f[keep] for f in r))
                sc[k] = exit_scores(policy, sub)
                ok[k] = sub.logits.argmax(-1) == labels[k]
            cal = calibrate(sc["val"], ok["val"], costs, full, max_drop_pp=args.max_drop)
            o = outcome(sc["test"], ok["test"], costs, cal.thresholds)
            drop = (float(ok["test"][-1].float().mean()) - o.accuracy) * 100
            saving = 1 - o.macs_per_sample / full
            rows.append(
                {
                    "exits": name,
                    "exit_indices": keep,
                    "policy": pol,
                    "test_accuracy": round(o.accuracy, 4),
                    "test_drop_pp": round(drop, 2),
                    "saving": round(saving, 4),
                }
            )
            print(f"{name:<12}{pol:<24}{o.accuracy:>9.2%}{drop:>10.2f}{saving:>12.1%}")
    seconds = time.perf_counter() - t0
    print(f"({seconds:.0f}s)")
    if args.json:
        result = {
            "run": str(run.path),
            "exit_points": points,
            "max_drop_pp": args.max_drop,
            "rows": rows,
            "seconds": round(seconds, 1),
            "provenance": provenance().model_dump(),
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
