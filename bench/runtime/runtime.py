"""Runtime benchmark: the distributed runtime on loopback against the same model and
policy in one process.

Prints, on this machine:
  latency at batch 1 (one request in flight): runtime vs in-process (the faster of one
    torch thread and torch's default), p50/p95;
  per-stage runtime overhead, p50, two ways: end to end, per input (runtime latency -
    in-process latency) / stages run (and that difference fitted as a cost per stage run
    plus a fixed cost per request); and coordinator + transport, per stage (wall time at
    the coordinator - the slowest worker's own time for the stage), also with only 2 and 1
    workers up (fewer processes competing for the CPU); CPU each process (and the client)
    spends per stage at batch 1 (Linux /proc), and the floor that puts under a stage's
    and a request's wall time when every process shares this machine's cores;
  throughput at saturation: runtime (calls of --batch inputs, --calls in flight) vs
    in-process (at its best of batch 32, 64, 128 and 256), in --rounds alternating rounds,
    median ratio;
  single-image clients: one input per call from each of --clients clients (8, 32 and 128
    by default; the coordinator groups waiting calls), in the same alternating rounds: the
    median throughput ratio to in-process, the coordinator's CPU per stage per input, and
    the p50/p99 latency a client sees, at each count; and every process's CPU per input
    (workers, coordinator, the client), whose sum over this machine's cores bounds the
    throughput, against the CPU the model takes per input in one process.

Usage: python bench/runtime/runtime.py RUN_DIR --data PATH [--n 300] [--n-sat 2000] [--policy conf-then-feature-diff]
       [--mode lockstep] [--batch 128] [--calls 4] [--clients 8,32,128] [--concurrency 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from distree.data import load_data
from distree.inference.inprocess import early_exit_batch
from distree.launch.local import LocalCluster
from distree.policies import DEFAULT_POLICY, make_policy
from distree.policies.calibration_file import model_thresholds
from distree.provenance import machine, provenance
from distree.run import RunDir
from distree.runtime.loadgen import run_infer


def _transport(requests: list[dict]) -> list[float]:
    """Per stage: wall time at the coordinator minus the slowest worker's own time."""
    return [s - w for r in requests for s, w in zip(r["stage_ms"], r["worker_ms"])]


def main() -> None:
    """Run both sides and print the comparison (and JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data")
    ap.add_argument("--n", type=int, default=300, help="test images per measurement")
    ap.add_argument("--policy", default=DEFAULT_POLICY)
    ap.add_argument("--mode", default="lockstep", choices=["lockstep", "eager"])
    ap.add_argument("--n-sat", type=int, default=2000, help="test images per throughput measurement")
    ap.add_argument("--batch", type=int, default=128, help="inputs per call at saturation")
    ap.add_argument("--calls", type=int, default=4, help="calls of --batch inputs in flight at saturation")
    ap.add_argument(
        "--clients", default="8,32,128", help="single-image client counts (one input per call, one call each in flight)"
    )
    ap.add_argument(
        "--concurrency", type=int, default=32, help="the client count whose ratio is throughput_ratio_one_input_calls"
    )
    ap.add_argument("--rounds", type=int, default=5, help="alternating saturation rounds (median ratio)")
    ap.add_argument("--json")
    args = ap.parse_args()

    run = RunDir(args.run_dir)
    meta = run.read_meta()
    test = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed).test
    images, labels = test.images[: args.n], test.labels[: args.n]
    student = run.load_student()
    policy = make_policy(args.policy)
    thresholds = model_thresholds(policy, student, run.read_calibration())
    norm = meta.data.normalization

    # In-process, batch 1, on one thread and on torch's default; the faster is the reference.
    early_exit_batch(student, policy, thresholds, images[:8], norm)  # warm-up
    default_threads = torch.get_num_threads()
    by_threads, cpu_s = {}, {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        ms, exits = [], []
        c0 = time.process_time()
        for i in range(len(images)):
            t0 = time.perf_counter()
            e = early_exit_batch(student, policy, thresholds, images[i : i + 1], norm).exit
            ms.append((time.perf_counter() - t0) * 1000)
            exits.append(int(e))
        cpu_s[threads] = time.process_time() - c0
        by_threads[threads] = (ms, exits)
    torch.set_num_threads(default_threads)
    inproc_threads = min(by_threads, key=lambda t: np.percentile(by_threads[t][0], 50))
    # A whole stage (every branch, fusing, deciding) in one process on one thread.
    stage_cpu_ms = cpu_s[1] * 1000 / sum(e + 1 for e in by_threads[1][1])
    inproc_ms, inproc_exit = by_threads[inproc_threads]
    sat_images, sat_labels = test.images[: args.n_sat], test.labels[: args.n_sat]

    def in_process_throughput(b: int) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(sat_images), b):
            early_exit_batch(student, policy, thresholds, sat_images[i : i + b], norm)
        return len(sat_images) / (time.perf_counter() - t0)

    # In-process, saturated: its best batch size (torch's threads), over --n-sat inputs.
    # ...and the CPU the model needs per input at each (the rounds below time it only).
    inproc_by_batch, inproc_cpu_ms_by_batch = {}, {}
    for b in (32, 64, 128, 256):
        cpu0 = time.process_time()
        inproc_by_batch[b] = in_process_throughput(b)
        inproc_cpu_ms_by_batch[b] = (time.process_time() - cpu0) * 1000 / len(sat_images)
    best_b = max(inproc_by_batch, key=inproc_by_batch.get)
    inproc_cpu_ms = inproc_cpu_ms_by_batch[best_b]

    cores = len(os.sched_getaffinity(0))
    with LocalCluster(run.path, log_dir=Path(tempfile.mkdtemp(prefix="distree-bench-"))) as cluster:
        cluster.start_workers(student.num_branches)
        coord = cluster.start_coordinator(extra=["--policy", args.policy, "--mode", args.mode])
        run_infer(coord, images[:16], labels[:16])  # warm-up
        cpu0, client0 = cluster.cpu_seconds(), time.process_time()
        single = run_infer(coord, images, labels)
        cpu1, client1 = cluster.cpu_seconds(), time.process_time()
        # Saturation in alternating rounds (in-process, then runtime), so that both sides
        # of each ratio saw the same machine; the median ratio is the figure.
        client_counts = sorted({*(int(c) for c in args.clients.split(",")), args.concurrency})
        rounds, single_image = [], {c: [] for c in client_counts}
        for _ in range(args.rounds):
            inproc = in_process_throughput(best_b)
            rt = run_infer(coord, sat_images, sat_labels, concurrency=args.calls, batch=args.batch)
            rounds.append({"in_process": round(inproc, 1), "runtime": rt["throughput_per_s"]})
            for c in client_counts:
                inproc = in_process_throughput(best_b)
                c0, client0 = cluster.cpu_seconds(), time.process_time()
                rt = run_infer(coord, sat_images, sat_labels, concurrency=c)
                c1, client1 = cluster.cpu_seconds(), time.process_time()
                coord_cpu = c1["coordinator"] - c0["coordinator"]
                stage_inputs = sum(r["exit"] + 1 for r in rt["requests"])
                # Every process's CPU per input sent (the failed ones are counted in
                # "failed"): with all of them on this machine's cores, their sum bounds the
                # throughput (cores / sum).
                cpu_per_input = {n: (c1[n] - c0[n]) * 1000 / len(sat_images) for n in c1}
                cpu_per_input["client"] = (client1 - client0) * 1000 / len(sat_images)
                single_image[c].append(
                    {
                        "in_process": round(inproc, 1),
                        "runtime": rt["throughput_per_s"],
                        "ratio": round(rt["throughput_per_s"] / inproc, 3),
                        "coordinator_cpu_ms_per_stage_input": round(coord_cpu * 1000 / stage_inputs, 3),
                        "cpu_ms_per_input": {n: round(v, 3) for n, v in cpu_per_input.items()},
                        "cpu_bound_per_s": round(cores * 1000 / sum(cpu_per_input.values()), 1),
                        "latency_ms": {q: rt["latency_ms"][q] for q in ("p50", "p99")},
                        "failed": rt["failed"],
                    }
                )
        # The same overhead with fewer processes competing for the CPU: stop workers from
        # the last one down, so that 2 and then 1 branch answer every stage.
        fewer = {}
        for up in (2, 1):
            for b in range(up, student.num_branches):
                if cluster.procs[f"worker{b}"].poll() is None:
                    cluster.kill(f"worker{b}")
            run_infer(coord, images[:16], labels[:16])  # the failures happen here
            answers = run_infer(coord, images, labels)["requests"]
            got = [r for r in answers if len(r["branches"]) == up]
            fewer[str(up)] = float(np.percentile(_transport(got), 50)) if got else None
    ratios = [r["runtime"] / r["in_process"] for r in rounds]
    median = sorted(range(len(rounds)), key=ratios.__getitem__)[len(rounds) // 2]
    inproc_best, sat = rounds[median]["in_process"], {"throughput_per_s": rounds[median]["runtime"]}
    # Per client count, the round of median ratio (its figures belong together).
    single_image_median = {
        c: sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2] | {"ratios": [r["ratio"] for r in runs]}
        for c, runs in single_image.items()
    }
    sat1 = single_image_median[args.concurrency]

    # CPU each process spent per stage at batch 1, against one branch's compute in one process.
    stages_run = sum(r["exit"] + 1 for r in single["requests"])
    cpu_per_stage = {n: round((cpu1[n] - cpu0[n]) / stages_run * 1000, 3) for n in cpu1}
    cpu_per_stage["client"] = round((client1 - client0) / stages_run * 1000, 3)
    # Every process shares this machine's cores, so a stage takes at least all their CPU
    # per stage spread over every core: the floor its wall time cannot go below here.
    stage_floor_ms = sum(cpu_per_stage.values()) / cores
    # The same for a whole request: one at a time, a request cannot take less wall time
    # than all the CPU it costs (every process, the client too) spread over every core.
    request_floor_ms = sum(cpu1[n] - cpu0[n] for n in cpu1) * 1000 / cores / len(images)
    request_floor_ms += (client1 - client0) * 1000 / cores / len(images)
    stage_wall = [s for r in single["requests"] for s in r["stage_ms"]]
    slowest_worker = [w for r in single["requests"] for w in r["worker_ms"]]
    rt_ms = [r["latency_ms"] for r in single["requests"]]
    same_exit = [r["exit"] == e for r, e in zip(single["requests"], inproc_exit)]
    per_stage = [(r - p) / (e + 1) for r, p, e, ok in zip(rt_ms, inproc_ms, inproc_exit, same_exit) if ok]
    # The same difference split into a cost per stage run and a fixed cost per request:
    # a straight line through (stages run, runtime - in-process latency) over the inputs.
    stages = [e + 1 for e, ok in zip(inproc_exit, same_exit) if ok]
    diffs = [r - p for r, p, ok in zip(rt_ms, inproc_ms, same_exit) if ok]
    slope, intercept = np.polyfit(stages, diffs, 1) if len(set(stages)) > 1 else (float("nan"), float("nan"))
    # Coordinator + transport only: each stage's wall time at the coordinator minus the
    # slowest worker's own time for it (queueing, batching and compute on the device).
    transport = _transport(single["requests"])
    result = {
        "provenance": provenance().model_dump(),
        "machine": f"{machine()}, torch {torch.__version__}",
        "run": str(run.path),
        "policy": args.policy,
        "mode": args.mode,
        "inputs": len(images),
        "batch1_latency_ms": {
            "runtime": {"p50": float(np.percentile(rt_ms, 50)), "p95": float(np.percentile(rt_ms, 95))},
            "in_process": {
                "p50": float(np.percentile(inproc_ms, 50)),
                "p95": float(np.percentile(inproc_ms, 95)),
                "torch_threads": inproc_threads,
            },
        },
        "per_stage_overhead_ms_p50": float(np.percentile(per_stage, 50)),
        "overhead_fit_ms": {"per_stage": float(slope), "per_request": float(intercept)},
        "per_stage_coordinator_transport_ms_p50": float(np.percentile(transport, 50)),
        "per_stage_coordinator_transport_ms_p50_by_workers_up": fewer,
        "same_exit_fraction": sum(same_exit) / len(same_exit),
        "batch1_cpu_ms_per_stage": cpu_per_stage | {"in_process_one_thread": round(stage_cpu_ms, 3)},
        "batch1_stage_ms_p50": {
            "wall": float(np.percentile(stage_wall, 50)),
            "slowest_worker": float(np.percentile(slowest_worker, 50)),
            "cpu_floor": round(stage_floor_ms, 3),
        },
        "batch1_request_ms": {
            "runtime_p50": float(np.percentile(rt_ms, 50)),
            "cpu_floor": round(request_floor_ms, 3),
        },
        "throughput_per_s": {
            "runtime": sat["throughput_per_s"],
            "runtime_one_input_calls": sat1["runtime"],
            "in_process": inproc_best,
            "in_process_by_batch": {str(b): round(t, 1) for b, t in inproc_by_batch.items()},
        },
        "in_process_cpu_ms_per_input": round(inproc_cpu_ms, 3),
        "saturation_rounds": rounds,
        "saturation": {"batch": args.batch, "calls": args.calls, "one_input_calls": args.concurrency},
        "throughput_ratio": round(sat["throughput_per_s"] / inproc_best, 3),
        "throughput_ratio_one_input_calls": sat1["ratio"],
        "single_image_clients": {str(c): m for c, m in single_image_median.items()},
        "single_image_rounds": {str(c): runs for c, runs in single_image.items()},
    }
    lat = result["batch1_latency_ms"]
    print(f"machine: {result['machine']}")
    print(f"model: {run.path}, policy {args.policy}, mode {args.mode}, {len(images)} test inputs")
    print(
        f"batch-1 latency p50/p95: runtime {lat['runtime']['p50']:.2f}/{lat['runtime']['p95']:.2f} ms, "
        f"in-process {lat['in_process']['p50']:.2f}/{lat['in_process']['p95']:.2f} ms ({inproc_threads} torch threads)"
    )
    print(
        f"per-stage overhead p50, end to end ((runtime - in-process) / stages): "
        f"{result['per_stage_overhead_ms_p50']:.3f} ms"
    )
    print(f"the same difference as a line over stages run: {slope:.3f} ms per stage + {intercept:.3f} ms per request")
    print(
        f"per-stage overhead p50, coordinator + transport (stage wall - slowest worker's time): "
        f"{result['per_stage_coordinator_transport_ms_p50']:.3f} ms"
    )
    print(
        "per-stage overhead p50, coordinator + transport, with fewer workers up: "
        + ", ".join(f"{k} up {v:.3f} ms" for k, v in fewer.items() if v is not None)
    )
    workers = [v for n, v in cpu_per_stage.items() if n.startswith("worker")]
    print(
        f"CPU per stage at batch 1: coordinator {cpu_per_stage['coordinator']:.2f} ms, each worker "
        f"{min(workers):.2f}-{max(workers):.2f} ms, client {cpu_per_stage['client']:.2f} ms; the whole "
        f"stage in one process on one thread: {stage_cpu_ms:.2f} ms"
    )
    print(
        f"batch-1 latency p50 {np.percentile(rt_ms, 50):.2f} ms; its floor from CPU: {request_floor_ms:.2f} ms (all "
        f"processes' CPU per request, the client's too, over {cores} cores)"
    )
    if args.mode == "lockstep":  # (eager workers run ahead: their stages overlap)
        print(
            f"stage wall time p50 at batch 1: {np.percentile(stage_wall, 50):.2f} ms (slowest worker's own "
            f"{np.percentile(slowest_worker, 50):.2f} ms); floor from CPU: {stage_floor_ms:.2f} ms (all "
            f"processes' CPU per stage over {cores} cores)"
        )
    print(
        f"throughput at saturation: runtime {sat['throughput_per_s']:.0f}/s ({args.calls} calls of {args.batch} "
        f"in flight), in-process {inproc_best:.0f}/s (batch {best_b}, the best of "
        f"{', '.join(map(str, inproc_by_batch))}); ratio {result['throughput_ratio']:.2f} (median of "
        f"{', '.join(f'{r:.2f}' for r in ratios)})"
    )
    print(
        f"single-image clients (one input per call; median of the alternating rounds); in-process the model "
        f"takes {inproc_cpu_ms:.2f} ms of CPU per input at batch {best_b}:"
    )
    for c, m in single_image_median.items():
        print(
            f"  {c:>4} clients: runtime {m['runtime']:.0f}/s, in-process {m['in_process']:.0f}/s, ratio "
            f"{m['ratio']:.2f} (of {', '.join(f'{r:.2f}' for r in m['ratios'])}); coordinator CPU per stage "
            f"per input {m['coordinator_cpu_ms_per_stage_input']:.3f} ms; latency p50 {m['latency_ms']['p50']:.1f} "
            f"ms, p99 {m['latency_ms']['p99']:.1f} ms" + (f"; {m['failed']} FAILED" if m["failed"] else "")
        )
        cpu = m["cpu_ms_per_input"]
        workers_ms = sum(v for n, v in cpu.items() if n.startswith("worker"))
        print(
            f"         CPU per input: workers {workers_ms:.2f} ms in all, coordinator {cpu['coordinator']:.2f} ms, "
            f"client {cpu['client']:.2f} ms; on {cores} cores that bounds throughput at {m['cpu_bound_per_s']:.0f}/s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
