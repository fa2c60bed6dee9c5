"""calibration.json, typed: each policy's fitted thresholds, and the lookup every executor uses.

Layout (one entry per calibrated policy)::

    {"target": {"max_drop_pp": 0.5, "budget": null, "confidence": 0.9},
     "split": "validation", "samples": 5000,
     "policies": {"max-prob": {"thresholds": [...], "accuracy": ..., ...,
                               "by_present": {"3": {...}, "2": {...}, "1": {...}}}}}

``thresholds`` hold the setting with every branch present; ``by_present[k]`` the one for k
branches present (k < N). An infinite threshold (never stop there) is written as null.
``depth_and_devices``, where calibration chose a schedule that wakes devices only for the
inputs that need them: its steps (``"0:1 1:1 1:4 2:4 3:4"``) and a threshold per step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, field_serializer, field_validator, model_serializer, model_validator

from distree.config import ConfigError, parse_config
from distree.policies.base import ExitPolicy, ExitThresholds
from distree.policies.registry import make_policy
from distree.policies.schedule import Schedule


class HasExits(Protocol):
    """A model's shape as thresholds see it (a DistrEEStudent, an export's manifest)."""

    @property
    def num_branches(self) -> int: ...

    @property
    def num_exits(self) -> int: ...


class Calibration(BaseModel):
    """Fitted thresholds and what they gave on the set they were fitted on; the record
    calibration.json holds per policy and per number of branches present (an infinite
    threshold, never stop there, is written as null)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    thresholds: list[float]
    accuracy: float
    drop_pp: float
    macs_per_sample: float
    saving: float
    met: bool
    message: str
    #: With a confidence: the upper confidence bound (pp) on the population drop of the chosen
    #: setting, from the held-out part, and that part's size. accuracy and drop_pp above are
    #: measured on every calibration sample, the part that chose the path included.
    drop_bound_pp: float | None = None
    confidence: float | None = None
    held_out: int | None = None

    @field_validator("thresholds", mode="before")
    @classmethod
    def _null_is_inf(cls, values: list[float | None]) -> list[float]:
        return [math.inf if v is None else v for v in values]

    @field_validator("thresholds")
    @classmethod
    def _a_threshold_or_never(cls, values: list[float]) -> list[float]:
        # NaN never stops and -inf always does, both without saying so: a damaged file.
        bad = [v for v in values if math.isnan(v) or v == -math.inf]
        if bad:
            raise ValueError(
                f"thresholds must be numbers, or null for 'never stop at this exit'; got {bad[0]} "
                "(run 'distree calibrate' again)"
            )
        return values

    @field_serializer("thresholds")
    def _inf_is_null(self, values: list[float]) -> list[float | None]:
        return [None if math.isinf(v) else v for v in values]


class CalibrationTarget(BaseModel):
    """The QoS target the thresholds were fitted for."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_drop_pp: float | None = None
    budget: float | None = None
    confidence: float | None = None


class ScheduleCalibration(Calibration):
    """A setting over depth and devices: the schedule's steps (``Schedule.label``) and a
    threshold for each step but the last."""

    schedule: str

    @field_validator("schedule")
    @classmethod
    def _a_schedule(cls, label: str) -> str:
        Schedule.parse(label)
        return label

    @model_validator(mode="after")
    def _a_threshold_per_step(self) -> ScheduleCalibration:
        steps = len(Schedule.parse(self.schedule).steps)
        if len(self.thresholds) != steps - 1:
            raise ValueError(f"schedule {self.schedule!r} needs {steps - 1} thresholds, got {len(self.thresholds)}")
        return self


class PolicyCalibration(Calibration):
    """A policy's setting with every branch present, one per smaller count, and the
    schedule over depth and devices when calibration chose one."""

    by_present: dict[int, Calibration] = {}
    depth_and_devices: ScheduleCalibration | None = None

    @model_serializer(mode="wrap")
    def _without_absent(self, handler):
        # Depth only: no entry, as in the files written before schedules existed.
        out = handler(self)
        if out.get("depth_and_devices") is None:
            out.pop("depth_and_devices", None)
        return out


class CalibrationFile(BaseModel):
    """Contents of RUN/calibration.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    target: CalibrationTarget
    split: str
    samples: int
    policies: dict[str, PolicyCalibration]


def read_calibration_file(path: Path) -> CalibrationFile:
    """Parse a calibration.json, naming the bad field when it is invalid."""
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); run 'distree calibrate' again") from None
    return parse_config(CalibrationFile, raw, str(path))


def thresholds_for(policy: ExitPolicy, saved: CalibrationFile | None, *, branches: int, exits: int) -> ExitThresholds:
    """The thresholds of ``policy`` for a model with ``branches`` branches and ``exits``
    exits: its fixed threshold at every exit, or its calibration (one setting per number of
    branches present)."""
    gaps = exits - 1
    if policy.fixed_threshold is not None:
        return ExitThresholds.same([policy.fixed_threshold] * gaps, branches)
    if saved is None or policy.name not in saved.policies:
        raise ValueError(f"policy {policy.name!r} is not calibrated; run 'distree calibrate' first")
    entry = saved.policies[policy.name]
    by_present = {branches: entry.thresholds} | {k: fit.thresholds for k, fit in entry.by_present.items()}
    if set(by_present) != set(range(1, branches + 1)):
        raise ValueError(
            f"the calibration of {policy.name!r} has thresholds for {sorted(by_present)} branches present, not for "
            f"each of 1..{branches}; run 'distree calibrate' again"
        )
    bad = [k for k, t in by_present.items() if len(t) != gaps]
    if bad:
        raise ValueError(
            f"the calibration of {policy.name!r} has {len(by_present[bad[0]])} thresholds for a model with "
            f"{exits} exits (need {gaps}); run 'distree calibrate' again"
        )
    over = entry.depth_and_devices
    if over is None:
        return ExitThresholds(by_present)
    schedule = Schedule.parse(over.schedule)
    try:
        schedule.check(exits, branches)
    except ValueError as err:
        raise ValueError(f"the calibration of {policy.name!r}: {err}; run 'distree calibrate' again") from None
    return ExitThresholds(by_present, schedule=schedule, per_step=over.thresholds)


def model_thresholds(policy: str | ExitPolicy, model: HasExits, saved: CalibrationFile | None) -> ExitThresholds:
    """``thresholds_for`` a policy (by name or object) on ``model``'s branches and exits."""
    policy = make_policy(policy) if isinstance(policy, str) else policy
    return thresholds_for(policy, saved, branches=model.num_branches, exits=model.num_exits)
