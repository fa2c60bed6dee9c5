"""One large call beside single-image calls from another client, on a local cluster.

Sends --inputs images in one call while a second client sends one image per call for as
long as the large call runs; prints how long each took and how many answers came with
fewer than every branch (must be 0) or failed.

Usage: python bench/runtime/large_call.py RUN_DIR --data PATH [--inputs 2048] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from distree.data import load_data
from distree.launch.local import LocalCluster
from distree.run import RunDir
from distree.runtime.client import DistreeClient, InferenceError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--inputs", type=int, default=2048)
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
            with DistreeClient(coord, timeout_s=600) as c:
                answers = c.infer(images)
            out["large_s"] = round(time.perf_counter() - t0, 2)
            out["large_fewer_branches"] = sum(len(a.branches) < n for a in answers)
            out["large_failed"] = False
        except InferenceError as err:
            out["large_failed"] = str(err)
        finally:
            done.set()
            t.join()
    out["single_calls"] = len(small)
    out["single_fewer_branches"] = sum(b is not None and b < n for _, b in small)
    out["single_failed"] = sum(b is None for _, b in small)
    out["single_max_s"] = round(max(s for s, _ in small), 2) if small else None
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
