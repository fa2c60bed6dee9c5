"""Prometheus metrics of workers and coordinators (one endpoint per process).

One registry per role: a worker's endpoint exports the worker families and a
coordinator's the coordinator's, each with ``distree_build_info{version, role}`` and the
process's own CPU and memory (``process_*``).
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from distree import __version__

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)

Role = Literal["worker", "coordinator"]


def _registry(role: Role) -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    build = Info("distree_build", "The distree release this process runs, and its role", registry=registry)
    build.info({"version": __version__, "role": role})
    return registry


REGISTRIES: dict[Role, CollectorRegistry] = {"worker": _registry("worker"), "coordinator": _registry("coordinator")}
_W, _C = {"registry": REGISTRIES["worker"]}, {"registry": REGISTRIES["coordinator"]}

# Worker side.
STAGES_RUN = Counter("distree_worker_stages_total", "Stages run, one per input", ["branch", "stage"], **_W)
STAGE_SECONDS = Histogram(
    "distree_worker_stage_seconds",
    "Compute time of one batched stage",
    ["branch", "stage"],
    buckets=LATENCY_BUCKETS,
    **_W,
)
QUEUE_SECONDS = Histogram(
    "distree_worker_queue_seconds",
    "Time a group's rows waited for their batch to start",
    ["branch", "stage"],
    buckets=LATENCY_BUCKETS,
    **_W,
)
BATCH_SIZE = Histogram(
    "distree_worker_batch_size",
    "Inputs per batched stage",
    ["branch"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    **_W,
)
STATES_DROPPED = Counter(
    "distree_worker_dropped_states_total", "Group states dropped", ["branch", "reason"], **_W
)  # reason: stop, cancel, expired
ACTIVE_STATES = Gauge("distree_worker_active_states", "Requests holding state on this worker", ["branch"], **_W)

# Coordinator side.
REQUESTS = Counter("distree_requests_total", "Inputs answered or failed", ["status"], **_C)
EXITS = Counter("distree_exits_total", "Inputs answered per exit", ["exit"], **_C)
REQUEST_SECONDS = Histogram("distree_request_seconds", "Wall time per input", buckets=LATENCY_BUCKETS, **_C)
COORD_QUEUE_SECONDS = Histogram(
    "distree_queue_seconds",
    "Time a call waited at the coordinator for its group to start",
    buckets=LATENCY_BUCKETS,
    **_C,
)
COORD_STAGE_SECONDS = Histogram(
    "distree_stage_seconds", "Wall time of one stage at the coordinator", ["exit"], buckets=LATENCY_BUCKETS, **_C
)
GROUP_INPUTS = Histogram(
    "distree_group_inputs",
    "Inputs per group (calls started together)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    **_C,
)
GROUPS_ABANDONED = Counter(
    "distree_groups_abandoned_total", "Groups stopped before their last stage: every caller had gone", **_C
)
WORKER_FAILURES = Counter("distree_worker_failures_total", "Stage calls a worker failed or missed", ["branch"], **_C)
STAGE_DEADLINE_MISSES = Counter(
    "distree_stage_deadline_misses_total",
    "Stages a worker answering other stages did not answer in time (left out of that group, kept in use)",
    ["branch"],
    **_C,
)
WORKER_UP = Gauge("distree_worker_up", "1 when the coordinator uses the worker", ["branch"], **_C)


def serve_metrics(port: int | None, role: Role, host: str = "127.0.0.1") -> None:
    """Expose ``role``'s metrics on ``host:port`` (nothing when ``port`` is None)."""
    if port is None:
        return
    try:
        start_http_server(port, addr=host, registry=REGISTRIES[role])
    except OSError as err:
        raise OSError(f"cannot serve metrics on {host}:{port}: {err.strerror}") from None
