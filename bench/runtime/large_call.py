"""One large call beside single-image calls from another client, on a local cluster.

Sends --inputs images in one call while a second client sends one image per call for as
long as the large call runs; prints how long each took and how many answers came with
fewer than every branch (must be 0) or failed.

With ``--abandon-after S`` the large call's client gives up after S seconds (its deadline
passes) and the bench measures, after that: how long the workers keep computing for it
(``abandoned_busy_s``: until their CPU, sampled every 50 ms, stays under a tenth of a core
for 200 ms; no other calls run then), and, in a second round with single-image calls
beside it, the slowest of those calls.

Usage: python bench/runtime/large_call.py RUN_DIR --data PATH [--inputs 2048]
       [--abandon-after S] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from distree.data import load_data
from distree.launch.local import LocalCluster
from distree.provenance import machine, provenance
from distree.run import RunDir
from distree.runtime.client import DistreeClient, InferenceError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--inputs", type=int, default=2048)
    ap.add_argument("--abandon-after", type=float, help="the large call's deadline, seconds: it is abandoned")
    ap.add_argument("--json")
    args = ap.parse_args()
    run = RunDir(args.run_dir)
    test = load_data(args.data, None, run.meta.config.data.val_fraction, run.meta.config.data.split_seed).test
    n = len(run.meta.config.student.branches)
    images = test.images[: args.inputs]
    out: dict = {"inputs": len(images)}
    with LocalCluster(run.path, log_dir=Path(tempfile.mkdtemp(prefix="distree-large-"))) as cluster:
        cluster.start_workers(n)
        coord = cluster.start_coordinator()
        if args.abandon_after:
            with DistreeClient(coord) as c:
                c.infer(test.images[:64])  # warm-up
            out["abandon_after_s"] = args.abandon_after
            out["abandoned_busy_s"] = _busy_after_abandoning(cluster, coord, images, args.abandon_after, n)
        small: list[tuple[float, int | None]] = []  # (seconds, branches or None when it failed)
        done = threading.Event()

        def singles() -> None:
            with DistreeClient(coord) as c:
                i = 0
                while not done.is_set():
                    t0 = time.perf_counter()
                    try:
                        a = c.infer(test.images[i % len(test) : i % len(test) + 1])[0]
                        small.append((time.perf_counter() - t0, len(a.branches)))
                    except InferenceError:
                        small.append((time.perf_counter() - t0, None))
                    i += 1

        t = threading.Thread(target=singles)
        t.start()
        t0 = time.perf_counter()
        try:
            with DistreeClient(coord, timeout_s=args.abandon_after or 600) as c:
                answers = c.infer(images)
            out["large_s"] = round(time.perf_counter() - t0, 2)
            out["large_fewer_branches"] = sum(len(a.branches) < n for a in answers)
            out["large_failed"] = False
        except InferenceError as err:
            out["large_failed"] = str(err)
            if args.abandon_after:
                time.sleep(2.0)  # single-image calls go on while the abandoned work stops
        finally:
            done.set()
            t.join()
    out["single_calls"] = len(small)
    out["single_fewer_branches"] = sum(b is not None and b < n for _, b in small)
    out["single_failed"] = sum(b is None for _, b in small)
    out["single_max_s"] = round(max(s for s, _ in small), 2) if small else None
    out["machine"] = machine()
    out["provenance"] = provenance(["python", *sys.argv]).model_dump(mode="json")
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def _busy_after_abandoning(cluster: LocalCluster, coord: str, images, deadline_s: float, n: int) -> float | None:
    """Seconds from the large call's deadline until the workers stop computing for it."""
    workers = [f"worker{b}" for b in range(n)]
    try:
        with DistreeClient(coord, timeout_s=deadline_s) as c:
            c.infer(images)
        return None  # answered before its deadline: nothing was abandoned
    except InferenceError:
        abandoned = time.perf_counter()
    samples = []  # (seconds since the deadline, workers' CPU seconds so far)
    while time.perf_counter() - abandoned < 10:
        cpu = cluster.cpu_seconds()
        samples.append((time.perf_counter() - abandoned, sum(cpu[w] for w in workers)))
        before = [s for s in samples if s[0] <= samples[-1][0] - 0.2]  # the window: its last start
        if before and samples[-1][1] - before[-1][1] < 0.1 * (samples[-1][0] - before[-1][0]):
            return round(before[-1][0], 2)
        time.sleep(0.05)
    return None


if __name__ == "__main__":
    main()
