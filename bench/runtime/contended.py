"""The runtime under a shared CPU: many single-image clients for a fixed time, alone and
beside a CPU-bound neighbour process (one busy thread, so half of a 2-core machine), with
one large call sent beside them, in each mode.

Prints, per mode and neighbour: answers/s, latency p50/p99, calls failed (by status),
whether the large call was answered (and in how long), and every process's CPU per input
answered (workers, coordinator, the clients' process); then the throughput beside the
neighbour as a share of the throughput without it.

Usage: python bench/runtime/contended.py RUN_DIR --data PATH [--clients 128] [--seconds 60]
       [--large 2048] [--modes lockstep,eager] [--policy max-prob] [--neighbour off,on]
       [--coordinator-args '--max-groups 2'] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from distree.data import load_data
from distree.launch.local import LocalCluster
from distree.provenance import machine, provenance
from distree.run import RunDir
from distree.runtime.client import DistreeClient, InferenceError

NEIGHBOUR = "while True: pass"


def _load(coord: str, images: np.ndarray, clients: int, seconds: float, large: int) -> dict:
    """``clients`` threads sending one image per call for ``seconds``, and one call of
    ``large`` inputs after a fifth of the time."""
    end = time.monotonic() + seconds
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    big: dict = {}

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        with DistreeClient(coord, timeout_s=30) as c:
            c.model_info()
            while time.monotonic() < end:
                i = int(rng.integers(len(images)))
                t0 = time.perf_counter()
                try:
                    c.infer(images[i : i + 1])
                    ms = (time.perf_counter() - t0) * 1000
                    with lock:
                        latencies.append(ms)
                except InferenceError as err:
                    with lock:
                        errors[err.code.name] += 1

    def large_call() -> None:
        time.sleep(seconds / 5)
        many = np.resize(images, (large, *images.shape[1:]))
        with DistreeClient(coord, timeout_s=60) as c:
            t0 = time.perf_counter()
            try:
                answers = c.infer(many)
                big.update(answered=len(answers), seconds=round(time.perf_counter() - t0, 2))
            except InferenceError as err:
                big.update(error=err.code.name, seconds=round(time.perf_counter() - t0, 2))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    threads.append(threading.Thread(target=large_call))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {
        "answered": len(latencies),
        "answers_per_s": round(len(latencies) / wall, 1),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p99": round(float(np.percentile(lat, 99)), 1)}
        if len(lat)
        else {},
        "failed": dict(errors),
        "large_call": big,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--clients", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--large", type=int, default=2048)
    ap.add_argument("--modes", default="lockstep,eager")
    ap.add_argument("--policy", default="max-prob")
    ap.add_argument("--neighbour", default="off,on", help="runs without and/or with the busy neighbour")
    ap.add_argument("--coordinator-args", default="", help="more 'distree serve' options, e.g. '--max-groups 2'")
    ap.add_argument("--json")
    args = ap.parse_args()
    run = RunDir(args.run_dir)
    meta = run.meta
    test = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed).test
    images = test.images[:2000].numpy()
    results = []
    for mode in args.modes.split(","):
        with LocalCluster(run.path, log_dir=Path(tempfile.mkdtemp(prefix="distree-contended-"))) as cluster:
            cluster.start_workers(len(meta.config.student.branches))
            extra = ["--policy", args.policy, "--mode", mode, *shlex.split(args.coordinator_args)]
            coord = cluster.start_coordinator(extra=extra)
            for neighbour in [{"off": False, "on": True}[n] for n in args.neighbour.split(",")]:
                busy = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if neighbour else None
                try:
                    cpu0, own0 = cluster.cpu_seconds(), time.process_time()
                    r = _load(coord, images, args.clients, args.seconds, args.large)
                    cpu1, own1 = cluster.cpu_seconds(), time.process_time()
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                answered = max(1, r["answered"] + r["large_call"].get("answered", 0))
                cpu = {n: round((cpu1[n] - cpu0[n]) * 1000 / answered, 3) for n in cpu1}
                cpu["clients"] = round((own1 - own0) * 1000 / answered, 3)
                r.update(mode=mode, neighbour=neighbour, cpu_ms_per_input=cpu)
                results.append(r)
                lat = r["latency_ms"]
                print(
                    f"{mode:9} {'beside a busy neighbour' if neighbour else 'alone':24} {r['answers_per_s']:7.1f}/s  "
                    f"p50 {lat.get('p50', float('nan')):7.1f} ms  p99 {lat.get('p99', float('nan')):7.1f} ms  "
                    f"failed {r['failed'] or 0}  large call {r['large_call']}",
                    flush=True,
                )
                print(f"          CPU ms per input: {cpu}", flush=True)
    for mode in args.modes.split(","):
        runs = {r["neighbour"]: r for r in results if r["mode"] == mode}
        if len(runs) == 2:
            ratio = runs[True]["answers_per_s"] / max(runs[False]["answers_per_s"], 1e-9)
            print(f"{mode}: beside the neighbour {ratio:.2f}x alone")
    out = {
        "machine": machine(),
        "clients": args.clients,
        "seconds": args.seconds,
        "policy": args.policy,
        "coordinator_args": args.coordinator_args,
        "results": results,
        "provenance": provenance(["python", *sys.argv]).model_dump(mode="json"),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
