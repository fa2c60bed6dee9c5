"""Exits over depth and devices: a schedule of steps, each an exit reached with some of the
devices awake.

A 1-D policy wakes every device for every input and decides at each exit in turn. A
schedule starts an input on fewer devices and wakes the others only for the inputs that
go on past a chosen step: ``[(0, 1), (1, 1), (1, 4), (2, 4), (3, 4)]`` runs one device to
exit 1 (deciding at exits 0 and 1), then wakes the other three, which run from stage 0 up
to exit 1 and decide there with all four, and so on. The policy's score and a threshold
per step decide as at the exits of a 1-D policy: the calibration of a schedule is the
calibration of a sequence of decision points, whatever their shape.

Which devices are awake: the first ``awake`` of a wake order, a rotation of the branches
``(s, s + 1, ..., s - 1)`` whose start ``s`` changes from input to input (or group to
group), so that the first device's extra load is spread over all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """A decision point: exit ``exit`` with the first ``awake`` devices of the wake order."""

    exit: int
    awake: int


@dataclass(frozen=True)
class Schedule:
    """Steps in the order an input takes them; the last one always stops."""

    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a schedule needs at least one step")
        for a, b in zip(self.steps, self.steps[1:]):
            if b.exit < a.exit or b.awake < a.awake or (b.exit, b.awake) == (a.exit, a.awake):
                raise ValueError(
                    f"schedule steps must move on in depth or devices, never back: {a} then {b} in {self.label}"
                )
        if self.steps[0].exit < 0 or self.steps[0].awake < 1:
            raise ValueError(f"the first step needs an exit >= 0 and at least one device awake: {self.label}")

    @classmethod
    def depth_only(cls, num_exits: int, num_branches: int) -> Schedule:
        """Every device from the start, every exit in turn: the 1-D policy's schedule."""
        return cls(tuple(Step(k, num_branches) for k in range(num_exits)))

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """From ``label``'s form, e.g. ``"0:1 1:1 1:4 2:4 3:4"`` (exit:awake per step)."""
        try:
            steps = tuple(Step(*(int(x) for x in part.split(":"))) for part in text.split())
        except (TypeError, ValueError):
            raise ValueError(f"a schedule is steps EXIT:AWAKE separated by spaces, got {text!r}") from None
        return cls(steps)

    @property
    def label(self) -> str:
        """``exit:awake`` per step, e.g. ``"0:1 1:1 1:4 2:4 3:4"``."""
        return " ".join(f"{s.exit}:{s.awake}" for s in self.steps)

    def check(self, num_exits: int, num_branches: int) -> None:
        """Raise ValueError unless the schedule fits a model of this shape and ends at its
        last exit with every device (the answer of full execution is always reachable)."""
        last = self.steps[-1]
        if any(s.exit >= num_exits or s.awake > num_branches for s in self.steps):
            raise ValueError(f"schedule {self.label} goes past the model's {num_exits} exits or {num_branches} devices")
        if (last.exit, last.awake) != (num_exits - 1, num_branches):
            raise ValueError(
                f"schedule {self.label} must end at the last exit with every device ({num_exits - 1}:{num_branches})"
            )


def wake_order(start: int, num_branches: int) -> tuple[int, ...]:
    """The branches in the order they wake for an input that starts on ``start``."""
    return tuple((start + i) % num_branches for i in range(num_branches))


def awake_branches(step: Step, start: int, num_branches: int) -> tuple[int, ...]:
    """The branches awake at ``step`` for an input that starts on ``start``, ascending."""
    return tuple(sorted(wake_order(start, num_branches)[: step.awake]))


def candidate_schedules(num_exits: int, num_branches: int) -> Iterator[Schedule]:
    """What calibration chooses among: the 1-D schedule, and every two-phase one that runs
    ``first`` devices (1 to N - 1) up to exit ``j`` and then wakes the rest, who either
    decide again at exit ``j`` with everyone or go straight on to exit ``j + 1``."""
    yield Schedule.depth_only(num_exits, num_branches)
    for first in range(1, num_branches):
        for j in range(num_exits - 1):
            head = tuple(Step(k, first) for k in range(j + 1))
            for resume in (j, j + 1):
                yield Schedule(head + tuple(Step(k, num_branches) for k in range(resume, num_exits)))
