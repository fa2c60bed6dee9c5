"""The runtime benchmark on two revisions of distree, alternately, in one run.

Checks out REV (default: the first parent of HEAD) into a temporary git worktree and runs
its runtime benchmark (``bench/runtime/runtime.py``, or ``bench/runtime.py`` in revisions
before bench/ had sub-folders) and this tree's, one after the other, ``--repeats`` times per
mode, on the same machine and data; prints the median of each figure for both, with
their ratio. Both read the same run directory, so any difference is the code's.

Usage: python bench/runtime/before_after.py [--before REV] [--modes lockstep,eager] [--repeats 2]
       [--json FILE] -- RUN_DIR --data PATH [any bench/runtime/runtime.py option]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURES = [
    ("batch1_latency_ms", "runtime", "p50"),
    ("batch1_latency_ms", "in_process", "p50"),
    ("batch1_cpu_ms_per_stage", "coordinator"),
    ("batch1_cpu_ms_per_stage", "worker0"),
    ("per_stage_overhead_ms_p50",),
    ("per_stage_coordinator_transport_ms_p50",),
    ("throughput_ratio",),
    ("throughput_ratio_one_input_calls",),
    ("single_image_clients", "32", "latency_ms", "p99"),
    ("same_exit_fraction",),
]


def _pick(result: dict, path: tuple[str, ...]):
    for key in path:
        result = result.get(key) if isinstance(result, dict) else None
    return result


def _run(tree: Path, args: list[str], mode: str, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    script = tree / "bench" / "runtime" / "runtime.py"
    if not script.exists():  # a revision from before bench/ had sub-folders
        script = tree / "bench" / "runtime.py"
    cmd = [sys.executable, str(script), *args, "--mode", mode, "--json", str(out)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="HEAD~1", help="the revision to compare with (default HEAD~1)")
    ap.add_argument("--modes", default="lockstep,eager")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each revision per mode, alternating")
    ap.add_argument("--json")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench/runtime/runtime.py's arguments")
    args = ap.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    t0 = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="distree-before-") as tmp:
        old = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), args.before], check=True)
        try:
            for mode in args.modes.split(","):
                runs: dict[str, list[dict]] = {"before": [], "after": []}
                for i in range(args.repeats):
                    for name, tree in (("before", old), ("after", ROOT))[:: 1 if i % 2 == 0 else -1]:
                        print(f"{mode}: {name} ({i + 1}/{args.repeats}) ...", file=sys.stderr, flush=True)
                        runs[name].append(_run(tree, bench_args, mode, Path(tmp) / f"{mode}-{name}-{i}.json"))
                results[mode] = runs
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    print(f"| mode | figure | before ({args.before}) | after | after / before |")
    print("|---|---|---:|---:|---:|")
    summary: dict = {"before": args.before, "repeats": args.repeats, "wall_s": None, "figures": {}}
    for mode, runs in results.items():
        for path in FIGURES:
            vals = {k: [_pick(r, path) for r in runs[k]] for k in runs}
            if any(v is None for vs in vals.values() for v in vs):
                continue
            med = {k: statistics.median(v) for k, v in vals.items()}
            ratio = med["after"] / med["before"] if med["before"] else float("nan")
            name = ".".join(path)
            summary["figures"][f"{mode}.{name}"] = {**med, "runs": vals}
            print(f"| {mode} | {name} | {med['before']:.3f} | {med['after']:.3f} | {ratio:.3f} |")
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"{summary['wall_s']} s in all", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
