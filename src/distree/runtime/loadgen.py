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

from distree.runtime.client import DistreeClient
from distree.runtime.security import TLSFiles


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


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
    """Send every image (``batch`` per call, ``concurrency`` calls in flight) and summarise;
    an input's latency is that of its call, its MACs what the coordinator charged it."""
    if batch < 1 or concurrency < 1:
        raise ValueError("batch and concurrency must be at least 1")
    with DistreeClient(server, token=token, tls=tls) as client:
        info = client.model_info()

        def call(start: int) -> list[dict]:
            t0 = time.perf_counter()
            answers = client.infer(images[start : start + batch], deadline_ms)
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
                }
                for j, a in enumerate(answers)
            ]

        starts = range(0, len(images), batch)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            calls = list(tqdm(pool.map(call, starts), total=len(starts), disable=None, leave=False))
        wall = time.perf_counter() - t0
    requests = [r for c in calls for r in c]
    lat = [r["latency_ms"] for r in requests]
    hist = [0] * info.num_exits
    for r in requests:
        hist[r["exit"]] += 1
    macs = sum(r["macs"] for r in requests) / len(requests)
    return {
        "server": server,
        "policy": info.policy,
        "mode": info.mode,
        "samples": len(requests),
        "batch": batch,
        "concurrency": concurrency,
        "accuracy": round(sum(r["label"] == r["prediction"] for r in requests) / len(requests), 4),
        "saving": round(1 - macs / info.full_macs, 4),
        "macs_per_sample": round(macs),
        "latency_ms": {q: round(percentile(lat, float(q[1:])), 3) for q in ("p50", "p95", "p99")}
        | {"mean": round(float(np.mean(lat)), 3)},
        "throughput_per_s": round(len(requests) / wall, 1),
        "exit_histogram": hist,
        "requests": requests,
    }


def format_infer(r: dict) -> str:
    """One summary line block of ``run_infer``."""
    lat = r["latency_ms"]
    return (
        f"{r['policy']:<23} ({r['mode']}): accuracy {r['accuracy']:.2%}  saving {r['saving']:.1%}  "
        f"latency p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  {r['throughput_per_s']:.0f}/s  "
        f"exits {r['exit_histogram']}"
    )
