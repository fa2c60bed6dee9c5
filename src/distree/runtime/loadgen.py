"""The load generator: a data set's images through a running coordinator, summarised.

What ``distree infer`` and ``distree demo`` print, and what the runtime benchmarks
measure with.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from distree.runtime.client import DistreeClient, InferenceError
from distree.runtime.security import TLSFiles


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def send(
    client: DistreeClient,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    concurrency: int = 1,
    deadline_ms: float = 0.0,
    batch: int = 1,
) -> tuple[list[dict], float]:
    """Send every image (``batch`` per call, ``concurrency`` calls in flight); returns one
    record per answered input (in input order) and the wall time. An input's latency is
    that of its call, its MACs what the coordinator charged it. A call that fails does not
    stop the others: its inputs get a record with ``error`` instead of an answer."""
    if batch < 1 or concurrency < 1:
        raise ValueError("batch and concurrency must be at least 1")

    def call(start: int) -> list[dict]:
        t0 = time.perf_counter()
        try:
            answers = client.infer(images[start : start + batch], deadline_ms)
        except InferenceError as err:
            return [{"label": int(labels[i]), "error": str(err)} for i in range(start, min(start + batch, len(images)))]
        ms = round((time.perf_counter() - t0) * 1000, 3)
        return [
            {
                "label": int(labels[start + j]),
                "prediction": a.prediction,
                "exit": a.exit,
                "branches": a.branches,
                "latency_ms": ms,
                "stop_reason": a.stop_reason,
                "stage_ms": [round(v, 3) for v in a.stage_ms],
                "worker_ms": [round(v, 3) for v in a.worker_ms],
                "macs": a.macs,
                "group_id": a.group_id,
                "start": a.start,
            }
            for j, a in enumerate(answers)
        ]

    starts = range(0, len(images), batch)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        calls = list(tqdm(pool.map(call, starts), total=len(starts), disable=None, leave=False))
    return [r for c in calls for r in c], time.perf_counter() - t0


def summarize(info, requests: list[dict], wall_s: float, **fields) -> dict:
    """Accuracy, saving, latency percentiles, throughput and exits of ``requests`` (from
    ``send``) to a coordinator described by ``info`` (its ModelInfo); ``fields`` are
    copied in front."""
    answered = [r for r in requests if "error" not in r]
    failed = [r for r in requests if "error" in r]
    lat = [r["latency_ms"] for r in answered]
    hist = [0] * info.num_exits
    devices = [0] * info.num_branches  # answers fused from 1..N devices
    for r in answered:
        hist[r["exit"]] += 1
        devices[len(r["branches"]) - 1] += 1
    macs = sum(r["macs"] for r in answered) / max(1, len(answered))
    return {
        **fields,
        "policy": info.policy,
        "schedule": info.schedule or None,
        "mode": info.mode,
        "samples": len(requests),
        "answered": len(answered),
        "failed": len(failed),
        "errors": sorted({r["error"] for r in failed})[:5],
        "accuracy": round(sum(r["label"] == r["prediction"] for r in answered) / max(1, len(answered)), 4),
        "saving": round(1 - macs / info.full_macs, 4),
        "macs_per_sample": round(macs),
        "latency_ms": {q: round(percentile(lat, float(q[1:])), 3) for q in ("p50", "p95", "p99")}
        | {"mean": round(float(np.mean(lat)), 3) if lat else float("nan")},
        "throughput_per_s": round(len(requests) / wall_s, 1),
        "exit_histogram": hist,
        "devices_histogram": devices,
        "requests": requests,
    }


def run_infer(
    server: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    token: str | None = None,
    tls: TLSFiles = TLSFiles(),
    concurrency: int = 1,
    deadline_ms: float = 0.0,
    batch: int = 1,
) -> dict:
    """``send`` every image to the coordinator at ``server`` and ``summarize``."""
    with DistreeClient(server, token=token, tls=tls) as client:
        info = client.model_info()
        requests, wall = send(client, images, labels, concurrency=concurrency, deadline_ms=deadline_ms, batch=batch)
    return summarize(info, requests, wall, server=server, batch=batch, concurrency=concurrency)


def format_infer(r: dict) -> str:
    """One summary line block of ``run_infer``."""
    lat = r["latency_ms"]
    failed = f"  FAILED {r['failed']} of {r['samples']}: {'; '.join(r['errors'])}" if r["failed"] else ""
    how = r["mode"] + (f", schedule {r['schedule']}" if r.get("schedule") else "")
    return (
        f"{r['policy']:<23} ({how}): accuracy {r['accuracy']:.2%}  saving {r['saving']:.1%}  "
        f"latency p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  {r['throughput_per_s']:.0f}/s  "
        f"exits {r['exit_histogram']}  answered by 1..{len(r['devices_histogram'])} devices "
        f"{r['devices_histogram']}{failed}"
    )
