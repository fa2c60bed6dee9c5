"""``distree cluster check``: every worker of a cluster file asked, before traffic starts,
whether it is reachable, serving, on its branch and on the run's weights.

"Looks healthy but cannot infer" is what a health check alone misses: a board that
serves another branch, other weights or the same process twice answers SERVING. The
check reads what each worker reports in ``Info`` and compares it with the cluster file
and the run directory the coordinator will serve.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distree.runtime.cluster_file import ClusterFile, WorkerEntry
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import TLSFiles, call_metadata, make_blocking_channel

RTT_PROBES = 3  # Info calls per worker; the median is reported


@dataclass
class WorkerCheck:
    """What one worker answered, and what is wrong with it (nothing: it passes)."""

    name: str
    address: str
    branch: int  # the branch the cluster file gives it
    reachable: bool = False
    serving: bool = False
    reported_branch: int | None = None
    fingerprint: str = ""
    weights_match: bool | None = None  # None: not compared (no expected fingerprint)
    backend: str = ""
    rtt_ms: float | None = None
    peak_rss_mib: float | None = None
    instance: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_worker(
    w: WorkerEntry, expected_fingerprint: str | None, token: str | None, tls: TLSFiles, timeout_s: float
) -> WorkerCheck:
    """Health, then ``Info`` (``RTT_PROBES`` times) of one worker."""
    row = WorkerCheck(w.name, w.address, w.branch)
    channel = make_blocking_channel(w.address, tls)
    metadata = call_metadata(token)
    with channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as err:
            row.problems.append(f"unreachable ({err.code().name})")
            return row
        row.reachable = True
        row.serving = health.status == health_pb2.HealthCheckResponse.SERVING
        if not row.serving:
            row.problems.append(f"not serving ({health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)})")
        stub, times, info = pb_grpc.WorkerStub(channel), [], None
        try:
            for _ in range(RTT_PROBES):
                t0 = time.perf_counter()
                info = stub.Info(pb.InfoRequest(), timeout=timeout_s, metadata=metadata)
                times.append((time.perf_counter() - t0) * 1000)
        except grpc.RpcError as err:
            why = "the token was rejected" if err.code() == grpc.StatusCode.UNAUTHENTICATED else err.code().name
            row.problems.append(f"Info failed: {why}")
            return row
    row.rtt_ms = round(statistics.median(times), 2)
    row.reported_branch, row.fingerprint, row.instance = info.branch, info.fingerprint, info.instance
    row.backend, row.peak_rss_mib = info.backend, info.peak_rss_mib or None
    if info.branch != w.branch:
        row.problems.append(f"serves branch {info.branch}, the cluster file says {w.branch}")
    if expected_fingerprint is not None:
        row.weights_match = info.fingerprint == expected_fingerprint
        if not row.weights_match:
            row.problems.append("serves other weights than the run's (copy the run directory to it again)")
    return row


def check_cluster(
    cluster: ClusterFile,
    expected_fingerprint: Callable[[int], str] | None,
    token: str | None = None,
    tls: TLSFiles = TLSFiles(),
    timeout_s: float = 3.0,
) -> list[WorkerCheck]:
    """One row per worker, in the file's order. ``expected_fingerprint(branch)``: the
    run's branch fingerprint (``RunDir.branch_fingerprint``), or None not to compare."""
    rows = []
    for w in cluster.workers:
        expected = expected_fingerprint(w.branch) if expected_fingerprint else None
        rows.append(check_worker(w, expected, token, tls, timeout_s))
    seen: dict[str, str] = {}
    for row in rows:  # one process behind two addresses serves one branch, not two
        if row.instance and row.instance in seen:
            row.problems.append(f"the same worker process as {seen[row.instance]}")
        elif row.instance:
            seen[row.instance] = row.name
    return rows
