"""The runtime demo: workers and one coordinator per policy, plus one for full execution,
as local processes (or the workers of a cluster file); the same test images through each,
measured side by side. ``run_demo`` returns a ``DemoResult``; ``distree demo`` prints it."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from distree.config import DEMO_POLICIES
from distree.launch.local import LocalCluster, settled_worker_infos
from distree.policies.scores import Full
from distree.provenance import machine
from distree.run import RunDir
from distree.runtime.client import DistreeClient
from distree.runtime.cluster import ClusterFile
from distree.runtime.loadgen import format_infer, send, summarize
from distree.runtime.security import resolve_token

DEMO_WARM_UP = 64  # images sent through each coordinator before anything is measured
DEMO_ROUNDS_PER_COORDINATOR = 2  # the measured images go in this many rounds per coordinator


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs: ``run`` over ``images``/``labels`` (the test split), each policy
    of ``policies`` beside full execution."""

    run: RunDir
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,)
    policies: Sequence[str] = DEMO_POLICIES
    mode: str = "lockstep"
    concurrency: int = 1
    #: Set: onnxruntime workers and coordinators serve this export (no torch in the cluster),
    #: and each answer is compared with the torch model's.
    export: Path | None = None
    cluster: ClusterFile | None = None  # the running workers of a cluster file instead of local ones


@dataclass
class DemoResult:
    """Per coordinator (each policy, then ``full``): ``summarize``'s figures, the devices'
    MACs per input measured on their counters and, against full execution, the accuracy
    drop, the devices' saving and the p50 speed-up."""

    mode: str
    backend: str
    samples: int
    runs: dict[str, dict]
    machine: str
    wall_s: float

    @property
    def policies(self) -> list[str]:
        """Those compared with full execution, in order."""
        return [p for p in self.runs if p != Full.name]

    def to_json(self) -> dict:
        return asdict(self)


def run_demo(s: DemoSettings, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> DemoResult:
    """Start the cluster, warm each coordinator up, send the images in rounds of rotating
    order (none always first on a machine whose load drifts), stop everything."""
    token = resolve_token(None, s.cluster.token_file) if s.cluster else None
    n = len(s.images)
    policies = list(dict.fromkeys(s.policies))
    names = [*policies, Full.name]
    logs = Path(tempfile.mkdtemp(prefix="distree-demo-logs-"))
    n_branches = len(s.run.meta.config.student.branches)
    source, backend_args, student = None, [], None
    if s.export is not None:
        source, backend_args = s.export, ["--backend", "onnxruntime"]
        student = s.run.load_student()  # the reference every answer is compared with
    where = f"the {n_branches} workers of the cluster file" if s.cluster else f"{n_branches} workers"
    log(f"{where} and {len(names)} local coordinators (logs in {logs}) ...")
    t0 = time.perf_counter()
    runs: dict[str, dict] = {}
    with LocalCluster(s.run.path, log_dir=logs, token=token) as cluster:
        if s.cluster:
            workers = cluster.worker_addresses = s.cluster.addresses
        else:
            workers = cluster.start_workers(n_branches, extra=backend_args, source=source)
        # On an export the coordinators fuse with the export's heads too: no torch in the cluster.
        extras = {p: ["--policy", p, "--mode", s.mode, *backend_args] for p in names}
        addresses = cluster.start_coordinators(extras, source=source)
        clients = {p: DistreeClient(addresses[p], token=token) for p in names}

        def devices_macs_run() -> int:  # what the workers have computed so far, from their counters
            return sum(i.macs_run for i in settled_worker_infos(workers, timeout_s=5.0, token=token))

        infos = {p: c.model_info() for p, c in clients.items()}
        warm = min(n, DEMO_WARM_UP)
        rounds = min(n, DEMO_ROUNDS_PER_COORDINATOR * len(names))
        log(
            f"cluster up in {time.perf_counter() - t0:.1f}s; {warm} images through each coordinator to warm up, "
            f"then {n} test images through each, in {rounds} rounds of rotating order"
        )
        sent = {p: ([], 0.0, 0) for p in names}  # requests, wall seconds, devices' MACs
        try:
            # Unmeasured: the first calls of a process pay for allocations and lazy set-up.
            for c in clients.values():
                send(c, s.images[:warm], s.labels[:warm], concurrency=s.concurrency)
            bounds = [round(i * n / rounds) for i in range(rounds + 1)]
            for r in range(rounds):
                lo, hi = bounds[r], bounds[r + 1]
                for p in names[r % len(names) :] + names[: r % len(names)]:
                    before = devices_macs_run()
                    reqs, wall = send(clients[p], s.images[lo:hi], s.labels[lo:hi], concurrency=s.concurrency)
                    done, walls, macs = sent[p]
                    sent[p] = (done + reqs, walls + wall, macs + devices_macs_run() - before)
        finally:
            for c in clients.values():
                c.close()
    for p in names:
        reqs, wall, macs = sent[p]
        r = summarize(infos[p], reqs, wall, server=addresses[p], concurrency=s.concurrency)
        if r["failed"]:
            raise RuntimeError(f"coordinator {p}: {r['failed']} inputs got no answer: {'; '.join(r['errors'])}")
        r["devices_macs_per_sample"] = round(macs / n)
        runs[p] = {k: v for k, v in r.items() if k != "requests"}
        if student is not None:
            runs[p]["torch_agreement"] = _torch_agreement(s.run, student, p, s.images, reqs)
    full = runs[Full.name]
    for p in policies:
        e = runs[p]
        e["accuracy_drop_pp"] = round((full["accuracy"] - e["accuracy"]) * 100, 2)
        e["devices_saving"] = round(1 - e["devices_macs_per_sample"] / full["devices_macs_per_sample"], 4)
        e["p50_speedup"] = round(full["latency_ms"]["p50"] / e["latency_ms"]["p50"], 3)
    backend = "torch" if s.export is None else "onnxruntime"
    wall_s = round(time.perf_counter() - t0, 1)
    return DemoResult(mode=s.mode, backend=backend, samples=n, runs=runs, machine=machine(), wall_s=wall_s)


def format_demo(r: DemoResult) -> str:
    """What ``distree demo`` prints: each coordinator's line, then each policy against full
    execution (and, on an export, how often its answers are the torch model's)."""
    names = [*r.policies, Full.name]
    lines = [format_infer(r.runs[p]) for p in names]
    if r.backend == "onnxruntime":
        lines.append(f"onnxruntime workers and coordinators against the torch model run here, same {r.samples} images:")
        for p in names:
            a = r.runs[p]["torch_agreement"]
            lines.append(
                f"  {p:<23} same prediction on {a['predictions']:.2%}, same exit on {a['exits']:.2%} "
                f"({a['differ']} of {r.samples} inputs answered differently)"
            )
    full = r.runs[Full.name]
    eager = " (eager: devices run ahead of the exit until cancelled; counted)" if r.mode == "eager" else ""
    lines.append(
        f"against full execution, same workers, same {r.samples} images; computation measured on the devices{eager}:"
    )
    for p in r.policies:
        e = r.runs[p]
        lines.append(
            f"  {p:<23} computes {e['devices_saving']:.1%} less ({e['devices_macs_per_sample'] / 1e6:.2f} M "
            f"against {full['devices_macs_per_sample'] / 1e6:.2f} M MACs per input), latency p50 "
            f"{e['latency_ms']['p50']:.1f} ms against {full['latency_ms']['p50']:.1f} ms ({e['p50_speedup']:.2f}x), "
            f"accuracy {e['accuracy']:.2%} against {full['accuracy']:.2%}"
        )
    return "\n".join(lines)


def demo_export(run: RunDir, export: str | Path | None, log: Callable[[str], None]) -> Path:
    """The export the onnxruntime workers serve: ``export``, checked against the run, or
    one written now into a new temporary directory."""
    from distree.export.manifest import read_manifest

    if export:
        manifest = read_manifest(export, run)
        # Its coordinators decide with the export's copy of the calibration, and every answer is
        # compared with the run's thresholds: the two must be the same.
        carried = (Path(export) / manifest.calibration).read_bytes() if manifest.calibration else None
        current = run.calibration_file.read_bytes() if run.calibration_file.is_file() else None
        if carried != current:
            raise ValueError(
                f"{export} carries another calibration than {run.path}'s (calibrated since it was exported, or "
                "exported by an older distree): export it again"
            )
        return Path(export)
    from distree.export.onnx_export import export_onnx

    out = Path(tempfile.mkdtemp(prefix="distree-demo-export-"))
    t0 = time.perf_counter()
    export_onnx(run, out)
    log(f"exported {run.path} to {out} for the onnxruntime workers in {time.perf_counter() - t0:.0f}s")
    return out


def _torch_agreement(run: RunDir, student, policy: str, images: torch.Tensor, requests: list[dict]) -> dict:
    """How often the runtime's answers in ``requests`` (one per input of ``images``, in
    order) match the same policy and thresholds run on ``student``, the run's torch model,
    in this process."""
    from distree.inference.inprocess import early_exit_batch
    from distree.policies import make_policy
    from distree.policies.calibration_file import model_thresholds

    p = make_policy(policy)
    thresholds = model_thresholds(p, student, run.read_calibration())
    exits, preds = [0] * len(requests), [0] * len(requests)
    # Under a schedule an answer depends on the branch its input started on: each input
    # runs here from the same one.
    starts = torch.tensor([r["start"] for r in requests])
    for start in starts.unique().tolist():
        rows = torch.nonzero(starts == start).flatten()
        for i in range(0, len(rows), 256):
            part = rows[i : i + 256]
            out = early_exit_batch(student, p, thresholds, images[part], run.meta.data.normalization, start=start)
            for r, e, q in zip(part.tolist(), out.exit.tolist(), out.predictions.tolist()):
                exits[r], preds[r] = e, q
    same_pred = [r["prediction"] == q for r, q in zip(requests, preds, strict=True)]
    same_exit = [r["exit"] == e for r, e in zip(requests, exits, strict=True)]
    n = max(1, len(requests))
    return {
        "predictions": round(sum(same_pred) / n, 5),
        "exits": round(sum(same_exit) / n, 5),
        "differ": len(same_pred) - sum(same_pred),
    }
