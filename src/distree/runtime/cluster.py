"""A cluster file: the coordinator and the workers of one deployment, in one place.

``distree serve --cluster FILE`` starts the coordinator it describes, ``distree cluster
check FILE`` asks every worker in it whether it is up, serving, on its branch and on the
run's weights before traffic starts. Paths in the file are relative to the file.

    run: models/cifar10
    coordinator: {listen: "0.0.0.0:50051", policy: max-prob, mode: lockstep}
    token_file: ~/.distree-token
    workers:
      - {name: board0, address: "board0.local:50061", branch: 0}
      - {name: board1, address: "board1.local:50061", branch: 1}

On boards, without torch: ``export: cifar10-export`` (a ``distree export`` directory)
instead of ``run``, and ``backend: onnxruntime`` in ``coordinator``; the check then reads
the weights' fingerprints from the export's manifest.

The check (``check_cluster``): every worker of a cluster file asked, before traffic starts,
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
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distree.config import parse_config, read_yaml_mapping
from distree.defaults import SERVE_DEFAULTS

if TYPE_CHECKING:  # grpc is imported by the check only: `distree --help` reads these models
    from distree.runtime.security import TLSFiles


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return value


class WorkerEntry(_Entry):
    """One device: the worker serving one branch."""

    name: str = Field(min_length=1)
    address: str  # HOST:PORT the coordinator reaches it at
    branch: int = Field(ge=0)

    @field_validator("address")
    @classmethod
    def _address_ok(cls, v: str) -> str:
        return _host_port(v)


class CoordinatorEntry(_Entry):
    """The coordinator: where it listens and how it decides."""

    listen: str = SERVE_DEFAULTS.listen
    policy: str = SERVE_DEFAULTS.policy
    mode: Literal["lockstep", "eager"] = SERVE_DEFAULTS.mode
    metrics_port: int | None = Field(default=None, gt=0, lt=65536)
    #: Where the exit heads run: torch on the run's weights, or onnxruntime on the export.
    backend: Literal["torch", "onnxruntime"] = SERVE_DEFAULTS.backend

    @field_validator("listen")
    @classmethod
    def _listen_ok(cls, v: str) -> str:
        return _host_port(v)


class TLSEntry(_Entry):
    """PEM files; which side they serve depends on where they appear."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def files(self) -> TLSFiles:
        """As the runtime takes them."""
        from distree.runtime.security import TLSFiles  # grpc: not for `distree --help`

        return TLSFiles(self.cert, self.key, self.ca)


class ClusterFile(_Entry):
    """What ``--cluster FILE`` holds."""

    run: Path | None = None  # the run directory a torch coordinator serves
    export: Path | None = None  # the 'distree export' directory an onnxruntime coordinator serves
    coordinator: CoordinatorEntry = CoordinatorEntry()
    workers: list[WorkerEntry] = Field(min_length=1)
    token_file: Path | None = None  # the shared secret of every RPC
    tls: TLSEntry | None = None  # the coordinator's own certificate, towards clients
    worker_tls: TLSEntry | None = None  # how the coordinator reaches the workers (and check does)

    @model_validator(mode="after")
    def _model_for_the_backend(self) -> ClusterFile:
        backend = self.coordinator.backend
        if backend == "torch" and self.run is None:
            raise ValueError(
                "a torch coordinator serves a run: give run: RUN_DIR (or export: DIR with coordinator.backend "
                "onnxruntime)"
            )
        if backend == "onnxruntime" and self.export is None:
            raise ValueError("coordinator.backend onnxruntime serves an export: give export: EXPORT_DIR")
        return self

    @property
    def served(self) -> Path:
        """What the coordinator serves: the run (torch) or the export (onnxruntime)."""
        return self.export if self.coordinator.backend == "onnxruntime" else self.run  # type: ignore[return-value]

    @model_validator(mode="after")
    def _one_worker_per_branch(self) -> ClusterFile:
        branches = sorted(w.branch for w in self.workers)
        if branches != list(range(len(self.workers))):
            raise ValueError(f"workers must serve branches 0..{len(self.workers) - 1} once each, got {branches}")
        for what in ("name", "address"):
            values = [getattr(w, what) for w in self.workers]
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"two workers share the {what} {', '.join(dup)}")
        return self

    @property
    def addresses(self) -> list[str]:
        """The workers' addresses in branch order (what ``serve --workers`` takes)."""
        return [w.address for w in sorted(self.workers, key=lambda w: w.branch)]


def load_cluster(path: str | Path) -> ClusterFile:
    """Read and validate a cluster file; errors name the file and the field. Relative
    paths in it are taken from the file's folder; ``~`` is the user's home."""
    raw = read_yaml_mapping(path, "cluster")
    cluster = parse_config(ClusterFile, raw, str(path))
    base = Path(path).parent

    def where(p: Path | None) -> Path | None:
        return None if p is None else base / p.expanduser()

    def tls(t: TLSEntry | None) -> TLSEntry | None:
        return None if t is None else TLSEntry(cert=where(t.cert), key=where(t.key), ca=where(t.ca))

    return cluster.model_copy(
        update={
            "run": where(cluster.run),
            "export": where(cluster.export),
            "token_file": where(cluster.token_file),
            "tls": tls(cluster.tls),
            "worker_tls": tls(cluster.worker_tls),
        }
    )


RTT_SAMPLES = 3  # Info calls per worker; the median is reported


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
    """Health, then ``Info`` (``RTT_SAMPLES`` times) of one worker."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from distree.runtime.proto import distree_pb2 as pb
    from distree.runtime.proto import distree_pb2_grpc as pb_grpc
    from distree.runtime.security import ClientAuth, ImpostorError, make_blocking_channel

    row = WorkerCheck(w.name, w.address, w.branch)
    channel = make_blocking_channel(w.address, tls)
    auth = ClientAuth(token, f"the worker at {w.address}", expect=f"worker/{w.branch}")
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
            metadata = auth.metadata(channel, timeout_s)
            for _ in range(RTT_SAMPLES):
                t0 = time.perf_counter()
                info = stub.Info(pb.InfoRequest(), timeout=timeout_s, metadata=metadata)
                times.append((time.perf_counter() - t0) * 1000)
        except ImpostorError as err:
            row.problems.append(str(err))
            return row
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
            row.problems.append("serves other weights than the cluster file's model (copy it to the worker again)")
    return row


def check_cluster(
    cluster: ClusterFile,
    expected_fingerprint: Callable[[int], str] | None,
    token: str | None = None,
    tls: TLSFiles | None = None,
    timeout_s: float = 3.0,
) -> list[WorkerCheck]:
    """One row per worker, in the file's order. ``expected_fingerprint(branch)``: the
    run's branch fingerprint (``RunDir.branch_fingerprint``), or None not to compare;
    ``tls`` how to reach the workers (default: plaintext)."""
    from distree.runtime.security import TLSFiles

    tls = tls or TLSFiles()
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
