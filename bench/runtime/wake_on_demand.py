"""Waking devices on demand against waking them all: the cluster's throughput at saturation
and what hard inputs pay, on this machine.

Starts the run's workers on loopback and two coordinators over them: one serving the
policy's calibrated schedule over depth and devices, one with ``--depth-only`` (every
device for every input). In ``--rounds`` alternating rounds each sends the same test
images in calls of ``--batch`` inputs, ``--calls`` in flight, and the bench prints per
side: answers/s, accuracy, MACs saved, the share of inputs answered by each number of
devices and the calls' latency (p50/p99); then the median throughput ratio. Every process shares this machine's cores, so the ratio shows the direction a
cluster of separate devices would see, not its size (the simulator's ``capacity/s`` is
that, for a scenario).

Usage: python bench/runtime/wake_on_demand.py RUN_DIR --data PATH [--policy max-prob]
           [--mode lockstep] [--n 2000] [--batch 64] [--calls 4] [--rounds 3] [--latency-n 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from distree.data import load_data
from distree.launch.local import LocalCluster
from distree.policies.calibration_file import model_thresholds
from distree.provenance import machine, provenance
from distree.run import RunDir
from distree.runtime.loadgen import run_infer

SIDES = ("schedule", "depth-only")


def _side(r: dict) -> dict:
    """One round's summary."""
    devices = Counter(len(q["branches"]) for q in r["requests"] if "error" not in q)
    return {
        "answers_per_s": r["throughput_per_s"],
        "accuracy": r["accuracy"],
        "saving": r["saving"],
        "failed": r["failed"],
        "answered_by_devices": {str(k): round(v / max(1, r["answered"]), 4) for k, v in sorted(devices.items())},
        "latency_ms": r["latency_ms"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--policy", default="max-prob")
    ap.add_argument("--mode", default="lockstep", choices=["lockstep", "eager"])
    ap.add_argument("--n", type=int, default=2000, help="test images per round")
    ap.add_argument("--batch", type=int, default=64, help="inputs per call")
    ap.add_argument("--calls", type=int, default=4, help="calls in flight")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (median ratio)")
    ap.add_argument("--latency-n", type=int, default=300, help="images sent one at a time to each side")
    ap.add_argument("--json")
    args = ap.parse_args()
    run = RunDir(args.run_dir)
    meta = run.meta
    schedule = model_thresholds(args.policy, run.load_student(), run.read_calibration()).schedule
    if schedule is None:
        sys.exit(f"{run.path}: the calibration of {args.policy} holds no schedule over depth and devices")
    test = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed).test
    images, labels = test.images[: args.n], test.labels[: args.n]
    rounds: list[dict[str, dict]] = []
    with LocalCluster(run.path, log_dir=Path(tempfile.mkdtemp(prefix="distree-wake-"))) as cluster:
        cluster.start_workers(len(meta.config.student.branches))
        common = ["--policy", args.policy, "--mode", args.mode]
        coords = cluster.start_coordinators({"schedule": common, "depth-only": [*common, "--depth-only"]})
        for i in range(args.rounds):
            raw = {
                side: run_infer(coords[side], images, labels, concurrency=args.calls, batch=args.batch)
                for side in (SIDES if i % 2 == 0 else SIDES[::-1])
            }
            rounds.append({side: _side(raw[side]) for side in SIDES})
            for side in SIDES:
                s = rounds[-1][side]
                print(
                    f"round {i + 1} {side:10} {s['answers_per_s']:7.1f}/s  accuracy {s['accuracy']:.2%}  "
                    f"saving {s['saving']:.1%}  answered by devices {s['answered_by_devices']}  "
                    f"calls p50/p99 {s['latency_ms']['p50']:.0f}/{s['latency_ms']['p99']:.0f} ms  failed {s['failed']}",
                    flush=True,
                )
        one = {
            side: run_infer(coords[side], images[: args.latency_n], labels[: args.latency_n])["requests"]
            for side in SIDES
        }
    n = len(meta.config.student.branches)
    took_all = [len(q.get("branches", [])) == n for q in one["schedule"]]
    single = {
        side: {
            kind: round(float(np.median([q["latency_ms"] for q, t in zip(one[side], took_all) if t == hard])), 2)
            for kind, hard in (("easy", False), ("hard", True))
            if any(t == hard for t in took_all)
        }
        for side in SIDES
    }
    print(f"one input at a time, p50 ms (easy: answered by fewer devices under the schedule; hard: by all): {single}")
    ratios = [r["schedule"]["answers_per_s"] / r["depth-only"]["answers_per_s"] for r in rounds]
    ratio = statistics.median(ratios)
    print(f"schedule {schedule.label}: median throughput {ratio:.2f}x waking every device ({args.mode})")
    if args.json:
        out = {
            "machine": machine(),
            "run": str(run.path),
            "policy": args.policy,
            "schedule": schedule.label,
            "mode": args.mode,
            "n": args.n,
            "batch": args.batch,
            "calls": args.calls,
            "rounds": rounds,
            "throughput_ratio": round(ratio, 3),
            "one_at_a_time_p50_ms": single,
            "provenance": provenance(["python", *sys.argv]).model_dump(mode="json"),
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
