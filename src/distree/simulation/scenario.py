"""Scenario files: the cluster, its links, the load and the systems to compare (YAML)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distree.config import ConfigError, parse_config, read_yaml_mapping
from distree.defaults import SWEEP_PARAMS  # noqa: F401  (defined where the command line reads it)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Availability(_Strict):
    """When a device is up: always, an on/off process, or a trace of (time_s, up) changes."""

    mean_up_s: float | None = Field(None, gt=0, description="mean of exponential up periods")
    mean_down_s: float | None = Field(None, gt=0, description="mean of exponential down periods")
    trace: list[tuple[float, bool]] | None = Field(None, description="[[time_s, up], ...] from time 0")
    up: bool = Field(True, description="state at time 0 (and forever, without a process or trace)")

    @model_validator(mode="after")
    def _one_kind(self) -> Availability:
        process = (self.mean_up_s is None) + (self.mean_down_s is None)
        if process == 1:
            raise ValueError("give both mean_up_s and mean_down_s for an on/off process")
        if process == 0 and self.trace is not None:
            raise ValueError("give an on/off process or a trace, not both")
        if self.trace is not None and [t for t, _ in self.trace] != sorted(t for t, _ in self.trace):
            raise ValueError("trace times must be increasing")
        return self

    @property
    def fraction_up(self) -> float:
        """Long-run fraction of time up (on/off process) or the fixed state."""
        if self.mean_up_s is not None and self.mean_down_s is not None:
            return self.mean_up_s / (self.mean_up_s + self.mean_down_s)
        return float(self.up)


class Link(_Strict):
    """A device's network link to the rest of the cluster."""

    bandwidth_mbps: float = Field(100.0, gt=0, description="in each direction, megabits per second")
    rtt_ms: float = Field(1.0, ge=0, description="round-trip time")
    jitter_ms: float = Field(0.0, ge=0, description="standard deviation of the one-way delay")
    header_bytes: int = Field(100, ge=0, description="per-message framing (gRPC, HTTP/2, TCP/IP)")
    burst_bytes: int = Field(
        0, ge=0, description="token-bucket depth of a shaped link (bytes sent at once after idle); 0: none"
    )


class Device(_Strict):
    """One edge device: runs one branch (DistrEE) or part of the teacher (baselines)."""

    name: str
    macs_per_s: float = Field(gt=0, description="sustained multiply-accumulates per second")
    overhead_ms: float = Field(0.0, ge=0, description="fixed cost of every stage it runs")
    stage_time_cv: float = Field(
        0.0, ge=0, le=3, description="coefficient of variation of each stage's time (gamma, mean as given)"
    )
    link: Link | None = Field(None, description="default: the scenario's link")
    availability: Availability = Availability()


class Coordinator(_Strict):
    """The node that fuses branch vectors and applies the exit policy."""

    macs_per_s: float = Field(1e10, gt=0)
    overhead_ms: float = Field(0.0, ge=0, description="per fusion and decision")
    request_overhead_ms: float = Field(0.0, ge=0, description="per request: receiving it and answering, any system")
    # The runtime's defaults (CoordinatorOptions): a failed device is tried again after
    # retry_initial_s, doubling up to retry_max_s, and used again once an attempt finds it up.
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(5.0, gt=0)


class Arrivals(_Strict):
    """Poisson arrivals at a rate, or a trace of arrival times."""

    rate_per_s: float | None = Field(None, gt=0)
    trace: list[float] | None = Field(None, description="arrival times in seconds, increasing")

    @model_validator(mode="after")
    def _one_kind(self) -> Arrivals:
        if (self.rate_per_s is None) == (self.trace is None):
            raise ValueError("give exactly one of rate_per_s and trace")
        return self


class Scenario(_Strict):
    """A whole simulated cluster and workload."""

    name: str
    description: str = ""
    devices: list[Device] = Field(min_length=1)
    coordinator: Coordinator = Coordinator()
    link: Link = Link()
    shared_medium: bool = Field(False, description="all devices share one channel (Wi-Fi): transfers queue")
    arrivals: Arrivals
    requests: int = Field(2000, ge=1, description="simulated requests; samples are used in a seeded order")
    deadline_ms: float | None = Field(None, gt=0, description="per-request deadline (QoS)")
    stage_timeout_ms: float = Field(200.0, gt=0, description="how long the coordinator waits for a stage")
    mode: Literal["lockstep", "eager"] = "lockstep"
    policies: list[str] | None = Field(None, description="DistrEE policies to run; default every calibrated one")
    seed: int = 0

    def link_of(self, device: int) -> Link:
        """The link of device ``device``."""
        return self.devices[device].link or self.link


def _read_rows(path: Path, columns: int, where: str) -> list[list[float]]:
    """Numeric rows of a CSV file (a header line is skipped)."""
    if not path.is_file():
        raise ConfigError(f"{where}: trace file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        cells = [c.strip() for c in line.split(",") if c.strip()]
        if not cells:
            continue
        try:
            values = [float(c) for c in cells]
        except ValueError:
            if n == 1:
                continue  # header
            raise ConfigError(f"{path}:{n}: expected {columns} number(s), got {line!r}") from None
        if len(values) != columns:
            raise ConfigError(f"{path}:{n}: expected {columns} number(s), got {line!r}")
        rows.append(values)
    return rows


def _inline_trace_files(raw: dict, base: Path) -> dict:
    """Replace each ``trace_file`` by the ``trace`` it holds (paths relative to ``base``):
    availability as CSV rows ``time_s,up`` (up 1 or 0), arrivals as one time per line."""
    for i, device in enumerate(raw.get("devices") or []):
        a = device.get("availability") if isinstance(device, dict) else None
        if isinstance(a, dict) and a.get("trace_file") is not None:
            rows = _read_rows(base / a.pop("trace_file"), 2, f"devices.{i}.availability")
            a["trace"] = [[t, bool(up)] for t, up in rows]
    arrivals = raw.get("arrivals")
    if isinstance(arrivals, dict) and arrivals.get("trace_file") is not None:
        arrivals["trace"] = [t for (t,) in _read_rows(base / arrivals.pop("trace_file"), 1, "arrivals")]
    return raw


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; errors name the bad field."""
    raw = _inline_trace_files(read_yaml_mapping(path, "scenario"), Path(path).parent)
    return parse_config(Scenario, raw, str(path))
