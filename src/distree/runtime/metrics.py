"""Prometheus metrics of workers and coordinators (one endpoint per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)

# Worker side.
STAGES_RUN = Counter("distree_worker_stages_total", "Stages run, one per input", ["branch", "stage"])
STAGE_SECONDS = Histogram(
    "distree_worker_stage_seconds", "Compute time of one batched stage", ["branch", "stage"], buckets=LATENCY_BUCKETS
)
QUEUE_SECONDS = Histogram(
    "distree_worker_queue_seconds",
    "Time a request's rows waited for their batch to start",
    ["branch", "stage"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "distree_worker_batch_size", "Inputs per batched stage", ["branch"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
STATES_DROPPED = Counter(
    "distree_worker_dropped_states_total", "Request states dropped", ["branch", "reason"]
)  # reason: stop, cancel, expired
ACTIVE_STATES = Gauge("distree_worker_active_states", "Requests holding state on this worker", ["branch"])

# Coordinator side.
REQUESTS = Counter("distree_requests_total", "Inputs answered or failed", ["status"])
EXITS = Counter("distree_exits_total", "Inputs answered per exit", ["exit"])
REQUEST_SECONDS = Histogram("distree_request_seconds", "Wall time per input", buckets=LATENCY_BUCKETS)
COORD_STAGE_SECONDS = Histogram(
    "distree_stage_seconds", "Wall time of one stage at the coordinator", ["exit"], buckets=LATENCY_BUCKETS
)
GROUP_INPUTS = Histogram(
    "distree_group_inputs", "Inputs per group (calls started together)", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
WORKER_FAILURES = Counter("distree_worker_failures_total", "Stage calls a worker failed or missed", ["branch"])
STAGE_DEADLINE_MISSES = Counter(
    "distree_stage_deadline_misses_total",
    "Stages a worker answering other stages did not answer in time (left out of that group, kept in use)",
    ["branch"],
)
WORKER_UP = Gauge("distree_worker_up", "1 when the coordinator uses the worker", ["branch"])


def serve_metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Expose this process's metrics on ``host:port`` (nothing when ``port`` is None)."""
    if port is None:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as err:
        raise OSError(f"cannot serve metrics on {host}:{port}: {err.strerror}") from None
