"""Emulated testbed vs simulator: the real runtime over shaped links against the simulator's prediction.

Four workers run in their own network namespaces behind veth links, the coordinator and the
client in the root namespace (distree.launch.testbed). Requests are sent one at a time.

For each scenario:
1. Unshaped links: measure each request's latency and its exit; fit the runtime's fixed
   costs to them by least squares, latency = per_request + per_stage * stages_run. These
   become the simulated coordinator's request_overhead_ms and the simulated devices'
   overhead_ms (compute is folded in; devices run 4 per 2 cores here). Then fit the
   devices' stage_time_cv (and rescale per_stage) so that the simulated unshaped p50 and
   p95 match the measured ones.
2. Shape every link as the scenario says, measure again, and simulate the scenario
   (fitted costs, the scenario's links, the same samples); print measured vs predicted
   p50/p95 and the error.

Needs root and iproute2; link delay needs the netem qdisc (else only bandwidth, with tbf).
Prints SKIPPED and why when the machine cannot run it.

Usage: python bench/runtime/testbed_vs_sim.py RUN_DIR --data PATH [--requests 150]
           [--scenario bench/runtime/scenarios/testbed-05mbit.yaml ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from distree.data import load_data
from distree.launch.local import LocalCluster
from distree.launch.testbed import Testbed, TestbedUnavailable, capabilities
from distree.provenance import machine
from distree.run import RunDir
from distree.runtime.client import DistreeClient
from distree.simulation.engine import Model, load_model, run_system
from distree.simulation.scenario import Link, load_scenario

HERE = Path(__file__).parent
DEFAULT_SCENARIOS = [HERE / "scenarios/testbed-05mbit.yaml", HERE / "scenarios/testbed-2mbit.yaml"]


def measure(address: str, images, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Latency (ms) and exit of ``n`` requests sent one at a time."""
    lat, exits = [], []
    with DistreeClient(address, timeout_s=30) as client:
        client.infer(images[:1])  # warm the channel
        for i in range(n):
            t0 = time.perf_counter()
            answer = client.infer(images[i : i + 1])[0]
            lat.append((time.perf_counter() - t0) * 1000)
            exits.append(answer.exit)
    return np.asarray(lat), np.asarray(exits)


def fit_costs(lat: np.ndarray, exits: np.ndarray) -> tuple[float, float]:
    """Least-squares (per-request ms, per-stage ms) from unshaped latencies and exits."""
    if len(set(exits.tolist())) < 2:
        # Every request ran the same stages: only the total is identified; call it per stage.
        return 0.0, float(np.mean(lat)) / (int(exits[0]) + 1)
    per_stage, per_request = np.polyfit(exits + 1, lat, 1)
    return max(0.0, float(per_request)), max(0.0, float(per_stage))


def predict(model: Model, scenario, per_request_ms: float, per_stage_ms: float, n: int, cv: float = 0.0) -> np.ndarray:
    """Simulated latencies (ms) of ``n`` requests, one at a time, with the fitted costs."""
    devices = [
        d.model_copy(update={"overhead_ms": per_stage_ms, "macs_per_s": 1e15, "stage_time_cv": cv})
        for d in scenario.devices
    ]
    coordinator = scenario.coordinator.model_copy(update={"request_overhead_ms": per_request_ms, "overhead_ms": 0.0})
    sc = scenario.model_copy(
        update={
            "devices": devices,
            "coordinator": coordinator,
            "requests": n,
            "arrivals": scenario.arrivals.model_copy(
                update={"trace": [10.0 * i for i in range(n)], "rate_per_s": None}
            ),
            "deadline_ms": None,
        }
    )
    run = run_system(sc, model, "distree-conf-then-feature-diff")
    return np.asarray([d.latency_s * 1000 for d in run.done])


def fit_variability(
    model: Model, scenario, lat: np.ndarray, per_request: float, per_stage: float, n: int
) -> tuple[float, float]:
    """(per-stage ms, stage-time CV) whose simulation on unshaped links matches the measured
    p50 and p95. A stage ends with the slowest of the workers, so variability also raises
    the mean: for each CV the per-stage cost is rescaled to keep p50, then the CV whose p95
    comes closest wins."""
    unshaped = scenario.model_copy(
        update={
            "link": Link(bandwidth_mbps=100_000, rtt_ms=0, header_bytes=0),
            "devices": [d.model_copy(update={"link": None}) for d in scenario.devices],
        }
    )
    p50, p95 = np.percentile(lat, 50), np.percentile(lat, 95)
    best = (per_stage, 0.0, float("inf"))
    for cv in np.arange(0.0, 1.51, 0.1):
        stage = per_stage
        for _ in range(2):
            sim50 = np.percentile(predict(model, unshaped, per_request, stage, n, cv), 50)
            stage *= (p50 - per_request) / max(1e-6, sim50 - per_request)
        miss = abs(np.percentile(predict(model, unshaped, per_request, stage, n, cv), 95) - p95)
        if miss < best[2]:
            best = (float(stage), float(cv), miss)
    return best[0], best[1]


def main() -> None:
    """Fit on the unshaped testbed, then compare shaped scenarios with the simulator."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data")
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--scenario", action="append", help="scenario YAML (repeatable)")
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        caps = capabilities()
    except TestbedUnavailable as err:
        print(f"SKIPPED: {err}")
        return
    scenarios = [load_scenario(p) for p in (args.scenario or DEFAULT_SCENARIOS)]
    run = RunDir(args.run_dir)
    meta = run.read_meta()
    test = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed).test
    n = args.requests
    full = load_model(run, args.data, torch.device("cpu"))
    model = Model(full.trace.subset(n), run.load_student(), full.calibration)
    branches = len(model.trace.vectors)
    print(f"link emulation: {'netem' if caps['netem'] else 'tbf (bandwidth only; no netem in this kernel)'}")

    results = {"machine": machine()}
    with (
        Testbed(branches, caps) as tb,
        LocalCluster(run.path, placement=lambda i: (tb.host(i), tb.command_prefix(i))) as cl,
    ):
        cl.start_workers(branches)
        coord = cl.start_coordinator(
            extra=["--policy", "conf-then-feature-diff", "--mode", "lockstep", "--stage-timeout-ms", "5000"]
        )
        cols = ("costs fitted", "measured p50", "sim p50", "error", "measured p95", "sim p95", "error")
        print(f"{'scenario':<16} " + " ".join(f"{c:>13}" for c in cols))
        results["scenarios"] = {}
        for sc in scenarios:
            # Fit right before each shaped run: this shared machine's speed drifts.
            tb.shape([None] * branches)
            base_lat, base_exits = measure(coord, test.images, n)
            per_request, per_stage = fit_costs(base_lat, base_exits)
            per_stage, cv = fit_variability(model, sc, base_lat, per_request, per_stage, n)
            tb.shape([sc.link_of(i) for i in range(branches)])
            lat, _ = measure(coord, test.images, n)
            tb.shape([None] * branches)
            pred = predict(model, sc, per_request, per_stage, n, cv)
            row = {
                "fit": {"per_request_ms": round(per_request, 3), "per_stage_ms": round(per_stage, 3), "stage_cv": cv}
            }
            for q in (50, 95):
                m, p = float(np.percentile(lat, q)), float(np.percentile(pred, q))
                row[f"p{q}"] = {"measured_ms": round(m, 2), "simulated_ms": round(p, 2), "error": round((p - m) / m, 4)}
            results["scenarios"][sc.name] = row
            cells = [f"{per_request:.1f}+{per_stage:.1f}/st cv{cv:.1f}"] + [
                f"{row[q][k]:.1f}" if k != "error" else f"{100 * row[q][k]:.1f}%"
                for q in ("p50", "p95")
                for k in ("measured_ms", "simulated_ms", "error")
            ]
            print(f"{sc.name:<16} " + " ".join(f"{c:>13}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
