"""Running a scenario: every system over the same requests, samples, arrivals and outages."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import simpy
import torch

from distree.data import ENV_VAR
from distree.models import DistrEEStudent
from distree.policies import ExitThresholds, policy_names
from distree.policies.calibration_file import CalibrationFile, model_thresholds
from distree.policies.scores import Full
from distree.run import RunDir
from distree.simulation.devices import Health, Network, SimDevice
from distree.simulation.outcomes import ExitTables
from distree.simulation.scenario import Scenario
from distree.simulation.systems import (
    Cluster,
    DistrEE,
    Done,
    pipeline_partition,
    pipeline_request,
    single_device_exits,
    single_device_request,
    teacher_request,
)
from distree.simulation.trace import TRACE_FILE, Trace, record_trace
from distree.tables import render

BASELINES = ("teacher", "pipeline", "single-device-exit")


class Model:
    """The recorded model a simulation replays: trace, exit heads and calibrated thresholds."""

    def __init__(self, trace: Trace, student: DistrEEStudent, calibration: CalibrationFile | None):
        if len(trace.vectors) != student.num_branches or len(trace.vectors[0]) != student.num_exits:
            raise ValueError("the trace was recorded from another model; run 'distree record' again")
        self.trace = trace
        self.tables = ExitTables(student, trace.vectors, trace.labels)
        self.calibration = calibration
        self.student = student
        self.num_exits = student.num_exits
        self.single_exits = single_device_exits(trace)

    @classmethod
    def from_run(cls, run: RunDir, trace: Trace) -> Model:
        """The model of a run directory with its recorded trace."""
        return cls(trace, run.load_student(), run.read_calibration())

    def calibrated_policies(self) -> list[str]:
        """Policies with thresholds in the run's calibration, in registry order."""
        saved = self.calibration.policies if self.calibration is not None else {}
        return [p for p in policy_names() if p in saved]

    def thresholds(self, policy: str) -> ExitThresholds:
        """Per-exit thresholds of ``policy`` for each number of branches present."""
        return model_thresholds(policy, self.student, self.calibration)


def systems_for(scenario: Scenario, model: Model) -> list[str]:
    """Every system a scenario compares: the baselines, DistrEE full, DistrEE per policy."""
    policies = scenario.policies if scenario.policies is not None else model.calibrated_policies()
    # Full execution is always compared; the others are the calibrated policies a coordinator serves.
    allowed = policy_names(servable=True, calibrated=True)
    unknown = [p for p in policies if p not in allowed]
    if unknown:
        raise ValueError(f"scenario policies: unknown {unknown}; choose from {allowed}")
    # A policy calibrated over depth and devices is also compared with its depth-only self.
    distree = [
        name
        for p in policies
        for name in (
            (f"distree-{p}{DEPTH_ONLY}", f"distree-{p}") if model.thresholds(p).schedule else (f"distree-{p}",)
        )
    ]
    return [*BASELINES, f"distree-{Full.name}", *distree]


#: The suffix of a DistrEE system that wakes every device for every input although its
#: policy's calibration holds a schedule over depth and devices.
DEPTH_ONLY = ":depth-only"


def distree_system(system: str) -> tuple[str, bool]:
    """``distree-POLICY[:depth-only]`` -> (policy, whether depth only)."""
    name = system.removeprefix("distree-")
    policy, sep, variant = name.partition(":")
    if sep and sep + variant != DEPTH_ONLY:
        raise ValueError(f"unknown system {system!r}: a DistrEE system is distree-POLICY or distree-POLICY{DEPTH_ONLY}")
    return policy, bool(sep)


def _arrival_times(scenario: Scenario, rng: np.random.Generator) -> np.ndarray:
    a = scenario.arrivals
    if a.trace is not None:
        if len(a.trace) < scenario.requests:
            raise ValueError(f"arrivals.trace has {len(a.trace)} times for {scenario.requests} requests")
        return np.asarray(a.trace[: scenario.requests], dtype=float)
    return np.cumsum(rng.exponential(1 / a.rate_per_s, scenario.requests))


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    v = np.asarray(values) * 1000
    return {"mean": float(v.mean()), **{f"p{q}": float(np.percentile(v, q)) for q in (50, 95, 99)}}


@dataclass
class SystemRun:
    """The outcome of every request of one system, and the simulated hardware afterwards."""

    system: str
    done: list[Done]
    devices: list[SimDevice]
    network: Network
    end_s: float
    num_exits: int | None  # systems that exit early


def simulate_system(scenario: Scenario, model: Model, system: str) -> dict:
    """Run ``scenario``'s requests through one system; returns its measures (JSON-ready)."""
    return _measures(scenario, run_system(scenario, model, system))


def run_system(scenario: Scenario, model: Model, system: str) -> SystemRun:
    """Run ``scenario``'s requests through one system and keep every request's record."""
    env = simpy.Environment()
    # Separate streams, seeded alike for every system: all systems see the same arrivals,
    # samples and outages, so their differences are the systems' own.
    streams = np.random.SeedSequence(scenario.seed).spawn(3 + len(scenario.devices))
    arrival_rng, sample_rng, net_rng = (np.random.default_rng(s) for s in streams[:3])
    devices = [
        SimDevice(env, spec, np.random.default_rng(s)) for spec, s in zip(scenario.devices, streams[3:], strict=True)
    ]
    network = Network(env, scenario, net_rng)
    coord = scenario.coordinator
    health = Health(env, devices, network, coord.retry_initial_s, coord.retry_max_s)
    cluster = Cluster(env, scenario, devices, network, health, model.trace)
    n = model.trace.meta.samples
    samples = sample_rng.permutation(n)[np.arange(scenario.requests) % n]
    times = _arrival_times(scenario, arrival_rng)

    start_request: Callable[[int], Generator]
    if system == "teacher":
        start_request = partial(teacher_request, cluster)
    elif system == "pipeline":
        cuts = pipeline_partition(model.trace.meta.teacher_block_macs, len(devices))
        start_request = partial(pipeline_request, cluster, cuts=cuts)
    elif system == "single-device-exit":
        start_request = partial(single_device_request, cluster, exits=model.single_exits)
    elif system.startswith("distree-"):
        policy, depth_only = distree_system(system)
        thresholds = model.thresholds(policy)
        start_request = DistrEE(
            cluster, model.tables, policy, thresholds.depth_only() if depth_only else thresholds
        ).request
    else:
        raise ValueError(f"unknown system {system!r}")

    done: list[Done] = []
    finished = env.event()

    def one(i: int) -> Generator:
        record = yield env.process(start_request(int(samples[i])))
        record.request = i
        done.append(record)
        if len(done) == scenario.requests:
            finished.succeed()

    def arrivals() -> Generator:
        for i, t in enumerate(times):
            yield env.timeout(t - env.now)
            env.process(one(i))

    env.process(arrivals())
    env.run(until=finished)
    done.sort(key=lambda d: d.request)
    exits = {"single-device-exit": len(model.trace.meta.teacher_exit_points)}.get(system)
    if system.startswith("distree-") and system != "distree-full":
        exits = model.num_exits
    return SystemRun(system, done, devices, network, env.now, exits)


def _measures(scenario: Scenario, run: SystemRun) -> dict:
    done, devices, end = run.done, run.devices, run.end_s
    answered = [d for d in done if d.latency_s is not None]
    latencies = [d.latency_s for d in answered]
    macs = sum(dev.macs for dev in devices) + sum(d.coordinator_macs for d in done)
    busiest = max(*(dev.busy_s for dev in devices), run.network.busiest_channel_s)
    out = {
        "requests": len(done),
        "failed": len(done) - len(answered),
        # A failed request has no answer: it counts as wrong.
        "accuracy": sum(d.correct for d in done) / len(done),
        "macs_per_sample": macs / len(done),
        "latency_ms": _percentiles(latencies),
        "deadline_hit_rate": (
            None
            if scenario.deadline_ms is None
            else sum(lat * 1000 <= scenario.deadline_ms for lat in latencies) / len(done)
        ),
        "utilisation": {dev.spec.name: dev.busy_s / end for dev in devices},
        # The utilisation law: the request rate at which the busiest device or link would
        # be busy all the time, at this run's busy time per request (no queue or timeout
        # counted; a failed request counts with the work it cost); None when nothing was busy.
        "capacity_per_s": len(done) / busiest if busiest else None,
        "bytes_per_request": run.network.bytes / len(done),
        "bytes_per_request_by_device": {
            dev.spec.name: b / len(done) for dev, b in zip(devices, run.network.device_bytes, strict=True)
        },
        "simulated_s": end,
    }
    if run.num_exits is not None:
        exits = [d.exit for d in answered]
        out["exit_histogram"] = np.bincount(exits, minlength=run.num_exits).astype(int).tolist()
    if run.system.startswith("distree-"):
        out["mean_branches"] = float(np.mean([len(d.branches) for d in answered])) if answered else 0.0
    return out


def simulate(
    scenario: Scenario,
    model: Model,
    systems: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    keep: dict[str, SystemRun] | None = None,
) -> dict:
    """Every system of ``scenario``; returns {"scenario": ..., "results": {system: measures}}.

    ``keep``, when given, receives each system's per-request records.
    """
    systems = list(systems) if systems is not None else systems_for(scenario, model)
    results = {}
    for i, system in enumerate(systems):
        t0 = time.perf_counter()
        run = run_system(scenario, model, system)
        results[system] = _measures(scenario, run)
        if keep is not None:
            keep[system] = run
        if log:
            log(f"[{i + 1}/{len(systems)}] {system}: {time.perf_counter() - t0:.1f}s")
    return {"scenario": scenario.name, "mode": scenario.mode, "requests": scenario.requests, "results": results}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def result_cells(r: dict) -> dict[str, str]:
    """One system's measures as table cells, by column."""
    lat = r["latency_ms"]
    return {
        "accuracy": f"{100 * r['accuracy']:.2f}%",
        "MMACs": f"{r['macs_per_sample'] / 1e6:.2f}",
        **{k: _ms(lat[k]) for k in ("mean", "p50", "p95", "p99")},
        "deadline": "-" if r["deadline_hit_rate"] is None else f"{100 * r['deadline_hit_rate']:.1f}%",
        "failed": str(r["failed"]),
        "max util": f"{100 * max(r['utilisation'].values()):.0f}%",
        "capacity": "-" if r["capacity_per_s"] is None else f"{r['capacity_per_s']:.1f}",
        "kB/req": f"{r['bytes_per_request'] / 1000:.1f}",
    }


def format_results(report: dict) -> str:
    """The results as an aligned text table (busiest device's utilisation, the request rate
    that would keep the busiest device or link busy all the time, kB on the wire per request)."""
    cols = ("accuracy", "MMACs", "mean", "p50", "p95", "p99", "deadline", "failed", "max util", "capacity", "kB/req")
    headers = ("system", "accuracy", "MMACs", "mean ms", *cols[3:9], "capacity/s", "kB/req")
    rows = [[name, *(result_cells(r)[c] for c in cols)] for name, r in report["results"].items()]
    title = f"scenario {report['scenario']} ({report['mode']}, {report['requests']} requests)"
    return "\n".join([title, *render(headers, rows)])


def load_model(run: RunDir, data: str | None, device: torch.device, log: Callable[[str], None] = print) -> Model:
    """The run's model with its trace, recording the trace first when there is none."""
    path = run.path / TRACE_FILE
    if not path.is_file() and data is None and not os.environ.get(ENV_VAR):
        raise FileNotFoundError(
            f"{run.path} has no recorded trace ({TRACE_FILE}); run 'distree record {run.path} --data PATH', "
            f"or pass --data (or set {ENV_VAR}) and it is recorded first"
        )
    trace = Trace.load(path) if path.is_file() else record_trace(run, data, device, log=log)
    return Model.from_run(run, trace)
