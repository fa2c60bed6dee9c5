"""A cluster file: the coordinator and the workers of one deployment, in one place.

``distree serve --cluster FILE`` starts the coordinator it describes, ``distree cluster
check FILE`` asks every worker in it whether it is up, serving, on its branch and on the
run's weights before traffic starts. Paths in the file are relative to the file.

    run: models/cifar10
    coordinator: {listen: "0.0.0.0:50051", policy: feature-agreement, mode: lockstep}
    token_file: ~/.distree-token
    workers:
      - {name: board0, address: "board0.local:50061", branch: 0}
      - {name: board1, address: "board1.local:50061", branch: 1}
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distree.config import DEFAULT_POLICY, parse_config, read_yaml_mapping

if TYPE_CHECKING:
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

    listen: str = "127.0.0.1:50051"
    policy: str = DEFAULT_POLICY
    mode: Literal["lockstep", "eager"] = "lockstep"
    metrics_port: int | None = Field(default=None, gt=0, lt=65536)

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

    run: Path  # the run directory the coordinator serves (and checks the workers' weights against)
    coordinator: CoordinatorEntry = CoordinatorEntry()
    workers: list[WorkerEntry] = Field(min_length=1)
    token_file: Path | None = None  # the shared secret of every RPC
    tls: TLSEntry | None = None  # the coordinator's own certificate, towards clients
    worker_tls: TLSEntry | None = None  # how the coordinator reaches the workers (and check does)

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
            "token_file": where(cluster.token_file),
            "tls": tls(cluster.tls),
            "worker_tls": tls(cluster.worker_tls),
        }
    )
