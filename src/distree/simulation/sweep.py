"""Sweeps: one scenario parameter varied over values, every system simulated at each."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

from distree.simulation.engine import Model, simulate
from distree.simulation.scenario import SWEEP_PARAMS, Availability, Scenario

#: The period of the on/off process an availability sweep gives every device (seconds).
AVAILABILITY_CYCLE_S = 10.0


def _with_links(scenario: Scenario, **update: float) -> Scenario:
    devices = [
        d.model_copy(update={"link": d.link.model_copy(update=update)}) if d.link else d for d in scenario.devices
    ]
    return scenario.model_copy(update={"link": scenario.link.model_copy(update=update), "devices": devices})


def vary(scenario: Scenario, param: str, value: float) -> Scenario:
    """``scenario`` with one parameter set to ``value``."""
    if param == "devices":
        n = int(value)
        if not 1 <= n <= len(scenario.devices):
            raise ValueError(f"devices: {n} is outside 1..{len(scenario.devices)} (the scenario's devices)")
        return scenario.model_copy(update={"devices": scenario.devices[:n]})
    if param == "bandwidth":
        return _with_links(scenario, bandwidth_mbps=float(value))
    if param == "rtt":
        return _with_links(scenario, rtt_ms=float(value))
    if param == "rate":
        return scenario.model_copy(
            update={"arrivals": scenario.arrivals.model_copy(update={"rate_per_s": value, "trace": None})}
        )
    if param == "availability":
        if not 0 < value <= 1:
            raise ValueError(f"availability: {value} is outside (0, 1]")
        a = (
            Availability()
            if value == 1
            else Availability(mean_up_s=value * AVAILABILITY_CYCLE_S, mean_down_s=(1 - value) * AVAILABILITY_CYCLE_S)
        )
        return scenario.model_copy(
            update={"devices": [d.model_copy(update={"availability": a}) for d in scenario.devices]}
        )
    raise ValueError(f"unknown sweep parameter {param!r}; choose from {', '.join(SWEEP_PARAMS)}")


COLUMNS = [
    "param",
    "value",
    "system",
    "accuracy",
    "macs_per_sample",
    "mean_ms",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "deadline_hit_rate",
    "failed",
]


def sweep(
    scenario: Scenario,
    model: Model,
    param: str,
    values: Sequence[float],
    systems: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per (value, system)."""
    rows = []
    for value in values:
        report = simulate(vary(scenario, param, value), model, systems)
        if log:
            log(f"{param} = {value:g}: done")
        for system, r in report["results"].items():
            lat = r["latency_ms"]
            rows.append(
                {
                    "param": param,
                    "value": value,
                    "system": system,
                    "accuracy": r["accuracy"],
                    "macs_per_sample": r["macs_per_sample"],
                    "mean_ms": lat["mean"],
                    "p50_ms": lat["p50"],
                    "p95_ms": lat["p95"],
                    "p99_ms": lat["p99"],
                    "deadline_hit_rate": r["deadline_hit_rate"],
                    "failed": r["failed"],
                }
            )
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    """Write sweep rows as CSV."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
