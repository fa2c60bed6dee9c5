"""Where the coordinator's (or a worker's) CPU goes: py-spy samples one process of a
local cluster while clients load it, and the samples are summed per function and per part
of the work.

For each load (single-image calls from 1 client, then from --clients clients, by
default), prints the process's CPU per stage per input (its CPU time over the
stage-inputs the requests ran) and the share of its samples in each part of the work
(samples are taken only from the thread holding the GIL: the process's Python work, not
its waits nor gRPC core's own threads): the gRPC core and its Python bindings, protobuf
encoding and decoding, the asyncio event loop itself, the stage loop (fusion heads,
policy, bookkeeping), tensor conversion, the coordinator's or the worker's own Python, a
worker's branch compute, and the rest; then the functions with the most self time.
Needs py-spy (``pip install py-spy``) and the right to trace a child process.

``--native`` samples every thread with its native frames instead (py-spy stops the
process at each sample, so the load runs a little slower): torch and gRPC release the GIL
in their C++ work, which the default sampling therefore misses. Samples of threads
waiting (in epoll_wait, poll, futex and the like) are left out, so the shares are of the
process's busy time.

Usage: python bench/runtime/profile_coordinator.py RUN_DIR --data PATH [--mode lockstep]
       [--policy max-prob] [--clients 1,32] [--n 600] [--process coordinator|worker0]
       [--native] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from distree.data import load_data
from distree.launch.local import LocalCluster
from distree.provenance import provenance
from distree.run import RunDir
from distree.runtime.loadgen import run_infer

#: Part of the work -> substrings of a frame ("function (file:line)") that belong to it,
#: tried in order on each sample's innermost distree-or-library frame chain.
PARTS = [
    ("branch compute", ("runtime/torch_stages.py", "runtime/ort_stages.py", "models/branch.py", "models/layers.py")),
    ("stage loop: fusion heads", ("models/heads.py",)),
    ("stage loop: policy", ("distree/policies/",)),
    ("stage loop: bookkeeping", ("inference/stage_loop.py", "inference/costs.py")),
    ("tensor conversion", ("runtime/tensors.py",)),
    ("protobuf", ("google/protobuf", "_pb2")),
    ("gRPC", ("grpc/", "grpc_", "cygrpc")),
    ("coordinator Python", ("runtime/coordinator.py", "runtime/worker_link.py")),
    (
        "worker Python",
        ("runtime/worker.py", "runtime/stage_runner.py", "runtime/batching.py", "runtime/state_store.py"),
    ),
    ("metrics", ("runtime/metrics.py", "prometheus")),
    ("asyncio event loop", ("asyncio/",)),
]


def classify(stack: list[str]) -> str:
    """The part of the work a sample (outermost frame first) was in: the innermost frame
    that names one of PARTS decides."""
    for frame in reversed(stack):
        for part, keys in PARTS:
            if any(k in frame for k in keys):
                return part
    return "other"


#: Innermost native frames of a thread that waits rather than works.
WAITING = (
    "epoll_wait",
    "epoll_pwait",
    "poll",
    "ppoll",
    "select",
    "pselect",
    "futex",
    "pthread_cond",
    "sem_wait",
    "nanosleep",
)


def profile(pid: int, seconds: float, out: Path, native: bool = False) -> list[tuple[list[str], int]]:
    """py-spy's raw samples of ``pid`` for ``seconds``: (stack, count) pairs; the thread
    holding the GIL only, or (``native``) every busy thread with its native frames."""
    how = ["--native"] if native else ["--nonblocking", "--gil"]
    rate = ["--duration", str(int(seconds)), "--rate", "500"]
    cmd = ["py-spy", "record", "--pid", str(pid), *rate, "--format", "raw", "--output", str(out), *how]
    subprocess.run(cmd, check=True, capture_output=True)
    samples = []
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if native and frames[-1].split(" ")[0].startswith(WAITING):
            continue
        samples.append((frames, int(count)))
    return samples


@contextlib.contextmanager
def concurrent_load(coord: str, images, labels, clients: int):
    """The same load, run in a thread while the profiler samples."""
    thread = threading.Thread(
        target=run_infer, args=(coord, images, labels), kwargs={"concurrency": clients}, daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        thread.join()


def main() -> None:
    """Profile the coordinator under each load and print the breakdown."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--mode", default="lockstep", choices=["lockstep", "eager"])
    ap.add_argument("--policy", default="max-prob")
    ap.add_argument("--clients", default="1,32", help="single-image client counts to profile under")
    ap.add_argument("--n", type=int, default=600, help="test images per load")
    ap.add_argument("--process", default="coordinator", help="what to profile: coordinator, or workerN")
    ap.add_argument("--native", action="store_true", help="every busy thread, native frames included")
    ap.add_argument("--json")
    args = ap.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not found: pip install py-spy")

    run = RunDir(args.run_dir)
    meta = run.read_meta()
    test = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed).test
    images, labels = test.images[: args.n], test.labels[: args.n]
    results = {
        "provenance": provenance().model_dump(),
        "mode": args.mode,
        "policy": args.policy,
        "process": args.process,
        "native": args.native,
        "loads": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="distree-profile-"))
    with LocalCluster(run.path, log_dir=tmp) as cluster:
        cluster.start_workers(len(meta.config.student.branches))
        coord = cluster.start_coordinator(extra=["--policy", args.policy, "--mode", args.mode])
        if args.process not in cluster.procs:
            raise SystemExit(f"--process: no {args.process!r} in this cluster ({', '.join(cluster.procs)})")
        pid = cluster.procs[args.process].pid
        run_infer(coord, images[:32], labels[:32], concurrency=4)  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            # Time one load first, then profile a second one of the same length.
            cpu0 = cluster.cpu_seconds()[args.process]
            load = run_infer(coord, images, labels, concurrency=clients)
            cpu = cluster.cpu_seconds()[args.process] - cpu0
            stage_inputs = sum(r["exit"] + 1 for r in load["requests"])
            wall = len(images) / load["throughput_per_s"]
            with concurrent_load(coord, images, labels, clients):
                samples = profile(pid, max(2.0, wall * 0.8), tmp / f"raw-{clients}.txt", args.native)
            total = sum(c for _, c in samples)
            parts = collections.Counter()
            self_time = collections.Counter()
            for stack, count in samples:
                parts[classify(stack)] += count
                self_time[stack[-1]] += count
            record = {
                "cpu_ms_per_stage_input": round(cpu * 1000 / stage_inputs, 3),
                "throughput_per_s": load["throughput_per_s"],
                "samples": total,
                "parts": {p: round(c / total, 3) for p, c in parts.most_common()},
                "top_self": [(f, round(c / total, 3)) for f, c in self_time.most_common(15)],
            }
            results["loads"][str(clients)] = record
            print(
                f"\n{clients} single-image client(s): {args.process} CPU per stage per input "
                f"{record['cpu_ms_per_stage_input']:.3f} ms, {load['throughput_per_s']:.0f}/s, "
                f"{total} samples"
            )
            for p, share in record["parts"].items():
                print(f"  {share:6.1%}  {p}")
            print("  most self time:")
            for f, share in record["top_self"]:
                print(f"  {share:6.1%}  {f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
