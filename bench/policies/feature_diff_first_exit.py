"""How much of a feature-difference policy's saving comes from its first exit?

The first exit has no previous embedding to compare with. Two policies differ only there,
each calibrated on the validation split for the same target (90% confidence) and
measured on the test split:
  conf-then-feature-diff  the first exit stops on softmax confidence;
  feature-diff            the first exit never stops, feature difference decides from exit 1 on.

Usage: python bench/policies/feature_diff_first_exit.py RUN_DIR --data PATH [--max-drop 0.5]
"""

from __future__ import annotations

import argparse
import time

import torch

from distree.evaluation.offline import record_val_test
from distree.inference.records import exit_costs
from distree.policies import exit_scores, make_policy
from distree.policies.calibration import calibrate, outcome
from distree.provenance import machine
from distree.run import RunDir


def main() -> None:
    """Print one row per first-exit rule."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data")
    ap.add_argument("--max-drop", type=float, default=0.5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    run = RunDir(args.run_dir)
    student, recs, labels = record_val_test(run, args.data, torch.device("cpu"))
    costs = exit_costs(student, "feature-diff")
    full = float(student.macs.full())
    print(f"run {run.path}, target: drop <= {args.max_drop} pp; machine: {machine()}")
    print(f"{'policy':<24}{'val drop':>10}{'val saving':>12}{'test drop':>11}{'test saving':>13}  test exits")
    for name in ("conf-then-feature-diff", "feature-diff"):
        pol = make_policy(name)
        sc = {k: exit_scores(pol, r) for k, r in recs.items()}
        ok = {k: r.logits.argmax(-1) == labels[k] for k, r in recs.items()}
        cal = calibrate(sc["val"], ok["val"], costs, full, max_drop_pp=args.max_drop)
        o = outcome(sc["test"], ok["test"], costs, cal.thresholds)
        test_full = float(ok["test"][-1].float().mean())
        print(
            f"{name:<24}{cal.drop_pp:>10.2f}{cal.saving:>12.1%}{(test_full - o.accuracy) * 100:>11.2f}"
            f"{1 - o.macs_per_sample / full:>13.1%}  {o.exit_histogram}"
        )
    print(f"({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
