"""The early-exit stage loop, without I/O: fuse what arrived, decide, drop the rows that left.

How a request runs to its exit is defined here once. The coordinator (vectors from
workers over gRPC), the in-process executor (branches run in turn) and the simulator's
request process (vectors from a recorded trace, time from SimPy) only decide where each
stage runs and hand each stage's vectors in; offline evaluation runs the same rule
vectorised over recorded outputs (``first_passing``) and charges the same costs
(``ExitCosts``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from distree.exits import Array, ExitOutput, ExitRecords
from distree.inference.costs import ExitCosts
from distree.policies import ExitPolicy, ExitThresholds, should_stop_for_deadline
from distree.policies.schedule import Schedule, Step, awake_branches


class Fusion(Protocol):
    """The exit heads as the loop calls them: the model's in PyTorch
    (``distree.models.HeadFusion``), or an export's in onnxruntime
    (``distree.export.ort.OrtHeads``), which needs no torch."""

    #: The array API namespace of the vectors it takes and the outputs it gives; the loop
    #: keeps its own records in the same kind of array.
    xp: Any

    def __call__(self, k: int, vectors: Sequence[Array | None], agreement: bool) -> ExitOutput:
        """Stage k's vectors (per branch (A, d), None for a branch that did not answer) and
        whether the policy reads agreement -> the fused ExitOutput of the A rows."""


class NoBranchAnswered(ValueError):
    """A step at which no branch had vectors to fuse: the rows still running cannot go on."""


class StopReason(str, Enum):
    """Why a row left the loop where it did."""

    POLICY = "policy"  # the policy's score reached the exit's threshold
    LAST_EXIT = "last-exit"  # there is no further exit
    DEADLINE = "deadline"  # the next stage would end after the row's deadline


@dataclass(frozen=True)
class Exited:
    """Where every row of a batch left, what it answered and what it cost."""

    exit: Array  # (rows,) int64
    logits: Array  # (rows, classes) float32 at each row's exit
    macs: Array  # (rows,) int64, charged by ``ExitCosts``
    head_macs: Array  # (rows,) int64, the exit heads' part of ``macs``
    reason: list[StopReason]
    branches: list[list[int]]  # the branches fused at each row's exit

    @property
    def predictions(self) -> Array:
        """(rows,) predicted class."""
        return self.logits.argmax(-1)


class StageLoop:
    """The rows (inputs) of one batch on their way through the exits.

    After each stage the driver hands in the branch vectors of the rows still running;
    rows the policy (or a deadline) stops leave with their logits, the branches that
    answered their exit and the MACs they cost; the others go on.

    ``arrived_s`` (rows,) and ``deadline_ms`` (rows,) (inf: none) turn on the deadline rule:
    a row stops at the exit in hand when the next stage, expected to take as long as the
    slowest stage so far, would end after its deadline.

    Arrays in and out are of the fusion's kind (``fuse.xp``): torch tensors or numpy arrays.

    The loop decides at the steps of a schedule (``distree.policies.schedule``): with
    ``thresholds.schedule`` set, the rows start on some of the devices (the first of the
    wake order that begins at ``start``) and wake the others only if they go on; without
    it, every device runs every stage and the loop decides at every exit. Before each step
    the driver runs what ``due()`` names, on the rows still running, and hands in the
    vectors of the step's exit (``next_step``): a branch woken late runs from stage 0.
    """

    def __init__(
        self,
        fuse: Fusion,
        policy: ExitPolicy,
        thresholds: ExitThresholds,
        costs: ExitCosts,
        rows: int,
        *,
        num_exits: int,
        arrived_s: Array | None = None,
        deadline_ms: Array | None = None,
        start: int = 0,
    ):
        self.fuse = fuse
        self.xp = xp = fuse.xp
        self.policy = policy
        self.thresholds = thresholds
        self.costs = costs
        self.num_exits = num_exits
        self.alive = xp.arange(rows)  # original row index of each running row
        self.exit = xp.full((rows,), -1, dtype=xp.int64)
        self.reason: list[StopReason | None] = [None] * rows
        self.branches: list[list[int]] = [[] for _ in range(rows)]  # present at each row's exit
        self.macs = xp.zeros(rows, dtype=xp.int64)  # at each row's exit: stages and heads
        self.head_macs = xp.zeros(rows, dtype=xp.int64)  # the heads' part (the coordinator's)
        # Every running row has been through the same stages with the same branches and
        # heads, so what they have cost so far is one number each.
        self._stage_macs = 0
        self._head_macs = 0
        self.logits: Array | None = None  # (rows, classes) at each row's exit
        self.stage_ms: list[float] = []  # per step taken
        self._slowest_stage_ms = 0.0  # the most of any step's time over the most stages a device ran for it
        if deadline_ms is not None:
            deadline_ms = xp.asarray(deadline_ms, dtype=xp.float64)
        has_deadline = deadline_ms is not None and bool(xp.any(xp.isfinite(deadline_ms)))
        if has_deadline and arrived_s is None:
            raise ValueError("deadlines need the rows' arrival times")
        self._arrived = xp.asarray(arrived_s, dtype=xp.float64) if has_deadline else None
        self._deadline = deadline_ms if has_deadline else None
        self._outputs: list[ExitOutput] = []  # per step so far, running rows only
        self.left = self.alive[:0]  # original indices of the rows the latest step stopped
        n = len(costs.macs.stage)
        self.num_branches = n
        self.start = start
        if thresholds.schedule is None:
            self.steps = Schedule.depth_only(num_exits, n).steps
        else:
            thresholds.schedule.check(num_exits, n)
            self.steps = thresholds.schedule.steps
        self._at = 0  # index of the next step
        self.ran_to = [-1] * n  # per branch: the last stage it ran for the running rows
        self.lost: set[int] = set()  # branches that did not answer a step they were due at
        # Vectors of the latest exit per branch, kept (running rows) only when the next
        # step fuses the same exit with more devices: the branches already there run nothing.
        self._held: dict[int, Array] = {}

    @property
    def last_step(self) -> bool:
        """The next step is the schedule's last: it stops every row left."""
        return self._at == len(self.steps) - 1

    @property
    def next_step(self) -> Step:
        """The step the loop decides at next."""
        return self.steps[self._at]

    def due(self) -> dict[int, range]:
        """Per branch, the stages to run before the next step, for the rows still running
        (``alive``): from the one after its last to the step's exit; a range from 0 means
        the branch starts now, on the rows' images. Branches with nothing to run are left out."""
        step = self.steps[self._at]
        return {
            b: range(self.ran_to[b] + 1, step.exit + 1)
            for b in awake_branches(step, self.start, self.num_branches)
            if b not in self.lost and self.ran_to[b] < step.exit
        }

    @property
    def done(self) -> bool:
        """Every row has exited."""
        return self.alive.shape[0] == 0

    def _late(self, stage_ms: float | None, now_s: float | None) -> Array | None:
        """(A,) bool: running rows whose deadline the next step would pass (as many of the
        slowest stage so far as the next step runs on one device)."""
        if self._deadline is None:
            return None
        if stage_ms is None or now_s is None:
            raise ValueError("with deadlines, every step needs the stage's time and the clock")
        elapsed = (now_s - self._arrived[self.alive]) * 1000
        stages = max((len(r) for r in self.due().values()), default=1) if self._at < len(self.steps) else 1
        return should_stop_for_deadline(elapsed, self._slowest_stage_ms * stages, self._deadline[self.alive])

    def step(
        self,
        k: int,
        vectors: Sequence[Array | None],
        *,
        stage_ms: float | None = None,
        now_s: float | None = None,
    ) -> Array:
        """Fuse exit ``k``'s vectors for the next step (per branch (A, d) for the A running
        rows: those ``due()`` named, None for one that did not answer; a branch already at
        ``k`` is fused from what it gave before) and decide. ``stage_ms`` is how long the
        step took and ``now_s`` the clock (seconds, as ``arrived_s``); both are needed
        only with deadlines. Returns (A,) bool: the rows that go on."""
        if self.done:
            raise ValueError("every row has exited")
        step, i = self.steps[self._at], self._at
        if k != step.exit:
            raise ValueError(f"the next step decides at exit {step.exit}, got vectors of exit {k}")
        due = self.due()
        stray = [b for b, v in enumerate(vectors) if v is not None and b not in due]
        if stray:
            raise ValueError(f"branches {stray} had nothing to run for step {step.exit}:{step.awake}")
        vectors = list(vectors)
        for b in due:
            if vectors[b] is None:
                self.lost.add(b)
            else:
                self._stage_macs += sum(self.costs.macs.stage[b][s] for s in due[b])
                self.ran_to[b] = k
        for b, v in self._held.items():
            if b not in self.lost:
                vectors[b] = v
        present = [b for b, v in enumerate(vectors) if v is not None]
        self.left = self.alive[:0]
        if stage_ms is not None:
            self.stage_ms.append(stage_ms)
            per_stage = stage_ms / max((len(r) for r in due.values()), default=1)
            self._slowest_stage_ms = max(self._slowest_stage_ms, per_stage)
        xp = self.xp
        if not present:
            asleep = [b for b in range(self.num_branches) if b not in self.lost and self.ran_to[b] < 0]
            if not asleep:
                raise NoBranchAnswered(f"no branch answered stage {k}")
            # Every device awake was lost: wake the others at this exit, and go on with
            # them as with every device (no step stops early without the devices the
            # thresholds were fitted with; the last one does).
            n = self.num_branches
            self.steps = self.steps[:i] + tuple(Step(e, n) for e in range(k, self.num_exits))
            return xp.ones(self.alive.shape[0], dtype=xp.bool)
        last = i == len(self.steps) - 1
        self._at += 1
        self._hold(vectors, present)
        running = self.alive.shape[0]
        late = self._late(stage_ms, now_s)
        if self.policy.reads_exits:
            out = self.fuse(k, vectors, self.policy.reads_agreement)
            self._head_macs += self.costs.head(k, leaving=False)
            self._outputs.append(out)
            stop = self.policy.should_exit(
                i, ExitRecords.of(self._outputs, stack=False), self._thresholds(step, present)
            )
        else:
            if not last and (late is None or not bool(late.any())):
                return xp.ones(running, dtype=xp.bool)  # no row leaves: no head to run
            out = self.fuse(k, vectors, False)
            stop = xp.full((running,), last, dtype=xp.bool)
        forced = None
        if late is not None:
            forced = late & ~stop
            stop = stop | forced
        if not bool(stop.any()):  # the common case: every row goes on, nothing to re-index
            return ~stop
        if self.logits is None:
            self.logits = xp.zeros((self.exit.shape[0], out.logits.shape[-1]), dtype=xp.float32)
        rows = self.left = self.alive[stop]
        self.exit[rows] = k
        self.logits[rows] = xp.astype(out.logits[stop], xp.float32)
        # A policy that reads no exit on the way pays only for the head its rows leave at.
        heads = self._head_macs + (0 if self.policy.reads_exits else self.costs.head(k, leaving=True))
        self.macs[rows] = self._stage_macs + heads
        self.head_macs[rows] = heads
        policy_reason = StopReason.LAST_EXIT if last else StopReason.POLICY
        by_deadline = forced[stop].tolist() if forced is not None else [False] * len(rows)
        for r, f in zip(rows.tolist(), by_deadline):
            self.reason[r] = StopReason.DEADLINE if f else policy_reason
            self.branches[r] = present
        keep = ~stop
        if len(rows) == running:  # every row is out
            self.alive, self._outputs = self.alive[:0], []
            return keep
        self.alive = self.alive[keep]
        self._outputs = [ExitOutput(*(None if t is None else t[keep] for t in o)) for o in self._outputs]
        self._held = {b: v[keep] for b, v in self._held.items()}
        return keep

    def _thresholds(self, step: Step, present: list[int]) -> list[float]:
        if self.thresholds.schedule is None:
            return self.thresholds.at(len(present))
        if len(present) < step.awake:
            # A device the schedule counted on did not answer: no threshold was fitted for
            # what is left, so the rows go on (the last step stops in any case).
            return [math.inf] * (len(self.steps) - 1)
        return list(self.thresholds.per_step)

    def _hold(self, vectors: Sequence[Array | None], present: list[int]) -> None:
        i = self._at
        if i < len(self.steps) and self.steps[i].exit == self.steps[i - 1].exit:
            self._held = {b: vectors[b] for b in present}  # type: ignore[misc]
        else:
            self._held = {}

    def result(self) -> Exited:
        """Every row's exit, once all have left."""
        if not self.done or self.logits is None:
            raise RuntimeError(f"{self.alive.shape[0]} rows have not exited yet")
        return Exited(self.exit, self.logits, self.macs, self.head_macs, list(self.reason), self.branches)  # type: ignore[arg-type]

    def exited(self, rows: Array) -> Exited:
        """The exits of some rows that have left (original indices, e.g. ``left``), while
        others may still run: a driver answers rows as they leave."""
        if self.logits is None or bool((self.exit[rows] < 0).any()):
            raise RuntimeError("some of these rows have not exited yet")
        idx = rows.tolist()
        return Exited(
            self.exit[rows],
            self.logits[rows],
            self.macs[rows],
            self.head_macs[rows],
            [self.reason[r] for r in idx],  # type: ignore[misc]
            [self.branches[r] for r in idx],
        )


class StageRunner(Protocol):
    """One branch as a driver that runs it in this process calls it: a model's
    (``distree.models.Branch``) in PyTorch, or an export's (``distree.export.ort.OrtBranch``)
    in onnxruntime."""

    def run_stage(self, k: int, x: Any) -> tuple[Any, Array]:
        """Stage ``k`` on what stage k-1 returned (the prepared images for k = 0):
        (its state for stage k+1, the pooled vector (rows, d) the heads read)."""


def run_in_turn(loop: StageLoop, branches: Sequence[StageRunner], x: Any) -> Exited:
    """Every branch in turn on the same prepared images ``x`` (rows first), what ``due()``
    names step by step, until every row has left ``loop``; the rows that leave are dropped
    from every branch's state, so computation stops where it does on the devices, and a
    branch woken late starts on the images of the rows still running."""
    state: dict[int, Any] = {}
    total = loop.exit.shape[0]
    while True:
        vectors: list[Array | None] = [None] * len(branches)
        for b, stages in loop.due().items():
            if stages.start == 0:
                state[b] = x if loop.alive.shape[0] == total else x[loop.alive]
            for k in stages:
                state[b], vectors[b] = branches[b].run_stage(k, state[b])
        keep = loop.step(loop.next_step.exit, vectors)
        if loop.done:
            return loop.result()
        if not bool(keep.all()):
            state = {b: s[keep] for b, s in state.items()}
