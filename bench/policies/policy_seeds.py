"""Every policy over several training seeds: mean and standard deviation of what eval reports.

For each seed, trains a student with the config's seed set to it (the teacher is taken from
``--teacher`` when given, so the seeds differ in the student only: its initialisation, data
order and branch drop-out), evaluates it with `distree eval`, and prints per policy the
mean and standard deviation over seeds of the per-exit AUROC and of the test drop and
saving at each calibrated target. A run already finished in WORK/seed-S is evaluated, not
trained again, so an interrupted bench continues where it stopped. ``--runs`` adds runs
trained already (for example the shipped model, trained with seed 0 and the teacher the
other seeds share): they are evaluated into WORK and counted as samples like the others.

Usage: python bench/policies/policy_seeds.py --data PATH --config FILE [--teacher RUN_DIR]
           [--seeds 0,1,2] [--runs RUN_DIR,...] [--work runs/seeds] [--limit N] [--epochs N]

Fashion-MNIST, the shipped model (seed 0) and two more students with its teacher (about
25 min per seed on 2 CPU cores):
  python bench/policies/policy_seeds.py --data ../shared/data/fashion-mnist --config configs/fashion-mnist.yaml \\
      --teacher models/fashion-mnist --runs models/fashion-mnist --seeds 1,2

Evaluations that hold ``depth_and_devices`` (``distree eval`` since it measures schedules
over depth and devices) add its mean and standard deviation: three students trained with
the device-subset term:
  python bench/policies/policy_seeds.py --data ../shared/data/fashion-mnist \\
      --config configs/fashion-mnist-subsets.yaml --teacher models/fashion-mnist --work runs/fm-subsets
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from distree.config import dump_json, load_run_config
from distree.provenance import machine


def _cli(*args: str) -> None:
    """Run the installed `distree` command; stop the bench if it fails."""
    cmd = [str(Path(sys.executable).parent / "distree"), *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}")


def _mean_sd(values: list[float], digits: int = 3) -> str:
    """``mean ± sd`` (sample standard deviation; 0 for one value), "-" for none."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    """Train, evaluate and summarise each seed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--teacher", help="take the teacher from this run (the seeds then differ in the student only)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    ap.add_argument("--runs", default="", help="comma-separated finished runs to count as samples too")
    ap.add_argument("--work", default="runs/seeds", help="where the runs go (default runs/seeds)")
    ap.add_argument("--limit", type=int, help="train on this many samples (quick checks)")
    ap.add_argument("--epochs", type=int, help="override both phases' epochs (quick checks)")
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    base = load_run_config(args.config)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    evals = []
    runs = [Path(r) for r in args.runs.split(",") if r]
    for r in runs:
        if not (r / "student.safetensors").is_file():
            sys.exit(f"--runs: {r} has no student.safetensors")
    samples = [(r, work / f"run-{i}-eval.json") for i, r in enumerate(runs)]
    samples += [(work / f"seed-{s}", work / f"seed-{s}-eval.json") for s in seeds]
    for seed, (run, eval_file) in zip([None] * len(runs) + seeds, samples):
        if seed is not None and not (run / "student.safetensors").is_file():
            cfg_file = work / f"seed-{seed}.json"
            dump_json(base.model_copy(update={"seed": seed}), cfg_file)
            train = ["train", "--data", args.data, "--config", str(cfg_file), "--out", str(run)]
            train += ["--teacher", args.teacher] if args.teacher else []
            train += ["--limit", str(args.limit)] if args.limit else []
            train += ["--epochs", str(args.epochs)] if args.epochs else []
            _cli(*train)
        if not eval_file.is_file():
            out_dir = run if seed is not None else eval_file.with_suffix("")  # curves out of a given run
            _cli("eval", str(run), "--data", args.data, "--json", str(eval_file), "--out-dir", str(out_dir))
        evals.append(json.loads(eval_file.read_text()))

    teacher = args.teacher or "trained per seed"
    print(f"{len(evals)} students: runs {[str(r) for r in runs]} and seeds {seeds} ({args.config}, teacher {teacher})")
    full = [e["full"]["accuracy"] for e in evals]
    print(f"full execution accuracy: {_mean_sd(full)}")
    targets = list(evals[0]["policies"]["max-prob"]["at_targets"])
    head = "".join(f" | {t} pp: drop / saving" for t in targets)
    print(f"| policy | AUROC per exit{head} |")
    print("|---|---|" + "---|" * len(targets))
    for name, first in evals[0]["policies"].items():
        if "at_targets" not in first:
            continue
        per_exit = zip(*(e["policies"][name]["auroc"] for e in evals), strict=True)
        auroc = " ".join(_mean_sd([a for a in col if a is not None]) for col in per_exit)
        cells = ""
        for t in targets:
            at = [e["policies"][name]["at_targets"][t] for e in evals]
            drop = _mean_sd([a["drop_pp"] for a in at], 2)
            saving = _mean_sd([a["saving"] * 100 for a in at], 1)
            cells += f" | {drop} / {saving}%"
        print(f"| `{name}` | {auroc}{cells} |")
    schedules = [e.get("depth_and_devices") for e in evals]
    if all(schedules):
        print("max-prob over depth only and over depth and devices (0.5 pp at 90% confidence):")
        print("| over | schedules chosen | drop (pp) | saving | answered by one device |")
        print("|---|---|---|---|---|")
        for over in schedules[0]:
            rows = [s[over] for s in schedules]
            chosen = ", ".join(sorted({r["schedule"] for r in rows}))
            drop = _mean_sd([r["drop_pp"] for r in rows], 2)
            saving = _mean_sd([r["saving"] * 100 for r in rows], 1)
            alone = _mean_sd([r["answered_by_devices"]["1"] * 100 for r in rows], 1)
            print(f"| {over} | {chosen} | {drop} | {saving}% | {alone}% |")
    print(f"({time.perf_counter() - t0:.0f} s; {machine()})")


if __name__ == "__main__":
    main()
