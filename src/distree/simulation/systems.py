"""How one request runs in each simulated system: DistrEE (lockstep or eager) and the baselines.

Each function is a SimPy process for one request; it returns a ``Done`` record. Costs come
from the trace (MACs, bytes), answers from the trace's real outputs.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import simpy
import torch

from distree.inference.costs import ExitCosts
from distree.inference.stage_loop import NoBranchAnswered, StageLoop, StopReason
from distree.models import ExitRecords, StudentMacs
from distree.policies import ExitThresholds, exit_scores, make_policy
from distree.policies.base import first_passing
from distree.policies.scores import MaxProb
from distree.simulation.devices import Health, Network, SimDevice
from distree.simulation.outcomes import ExitTables
from distree.simulation.scenario import Scenario
from distree.simulation.trace import Trace

#: Bytes of a control message (go, stop, cancel) without framing.
CONTROL_BYTES = 16


@dataclass
class Done:
    """What happened to one request."""

    sample: int
    latency_s: float | None  # None: failed (no device could answer)
    correct: bool
    exit: int | None = None
    branches: list[int] = field(default_factory=list)
    coordinator_macs: float = 0.0
    # DistrEE only: the answer, the MACs the stage loop's cost rule charged, why it stopped.
    prediction: int | None = None
    macs: int = 0
    stop_reason: StopReason | None = None
    request: int = -1  # arrival order, set by the engine


@dataclass
class Cluster:
    """Everything a request process needs: simulated hardware plus the recorded model."""

    env: simpy.Environment
    scenario: Scenario
    devices: list[SimDevice]
    network: Network
    health: Health
    trace: Trace


def _coordinator_time(c: Cluster, macs: float) -> simpy.Timeout:
    spec = c.scenario.coordinator
    return c.env.timeout(spec.overhead_ms / 1000 + macs / spec.macs_per_s)


def _failed(sample: int) -> Done:
    return Done(sample, None, False)


def _admit(c: Cluster) -> simpy.Timeout:
    """The coordinator's fixed cost of taking a request in and answering it."""
    return c.env.timeout(c.scenario.coordinator.request_overhead_ms / 1000)


# -- DistrEE ----------------------------------------------------------------------------


class DistrEE:
    """DistrEE with one exit policy: branches on their devices, fusion and decisions here."""

    def __init__(self, cluster: Cluster, tables: ExitTables, policy: str, thresholds: ExitThresholds):
        self.c = cluster
        self.tables = tables
        self.policy = make_policy(policy)
        self.thresholds = thresholds
        meta = cluster.trace.meta
        self.costs = ExitCosts(StudentMacs(meta.stage_macs, meta.head_macs), self.policy)
        self._next_start = 0  # the branch the next request starts on, under a schedule

    def _stage(self, b: int, e: int, message: int) -> Generator:
        """Lockstep: message down (input or go), run stage e, vector up. Value: success."""
        c = self.c
        yield from c.network.transfer(b, "down", message)
        ok = yield c.env.process(c.devices[b].compute(c.trace.meta.stage_macs[b][e]))
        if not ok:
            return False
        yield from c.network.transfer(b, "up", c.trace.meta.vector_bytes[b][e])
        return True

    def _stages(self, b: int, stages: range) -> Generator:
        """Lockstep: ``stages`` one after another, as ``_stage`` (the first carries the
        input when it is stage 0). Value: success."""
        for k in stages:
            ok = yield from self._stage(b, k, self.c.trace.meta.input_bytes if k == 0 else CONTROL_BYTES)
            if not ok:
                return False
        return True

    def _eager_worker(self, b: int, arrived: list[simpy.Event], cancelled: dict[int, bool]) -> Generator:
        """Eager: input down, then every stage back to back, each vector sent as it is ready."""
        c = self.c
        yield from c.network.transfer(b, "down", c.trace.meta.input_bytes)
        for e, ev in enumerate(arrived):
            if cancelled[b]:
                return
            ok = yield c.env.process(c.devices[b].compute(c.trace.meta.stage_macs[b][e]))
            if not ok:
                ev.succeed(False)
                return
            c.env.process(self._send_vector(b, e, ev))

    def _send_vector(self, b: int, e: int, ev: simpy.Event) -> Generator:
        yield from self.c.network.transfer(b, "up", self.c.trace.meta.vector_bytes[b][e])
        ev.succeed(True)

    def _cancel(self, b: int, cancelled: dict[int, bool]) -> Generator:
        yield from self.c.network.transfer(b, "down", CONTROL_BYTES)
        cancelled[b] = True

    def request(self, sample: int) -> Generator:
        """One request through the stage loop; value: Done."""
        c, env, meta = self.c, self.c.env, self.c.trace.meta
        start_s = env.now
        yield _admit(c)
        # With fewer devices than branches, the first len(devices) branches are deployed.
        deployed = min(len(meta.stage_macs), len(c.devices))
        active = [b for b in range(deployed) if c.health.usable[b]]
        if not active:
            return _failed(sample)
        eager = c.scenario.mode == "eager"
        num_exits = len(meta.head_macs)
        arrivals: dict[int, list[simpy.Event]] = {}
        cancelled: dict[int, bool] = {}
        deadline = c.scenario.deadline_ms
        n = len(meta.stage_macs)
        # As the coordinator: a schedule with every device up, else every device from the start.
        thresholds = self.thresholds if len(active) == n else self.thresholds.depth_only()
        start, self._next_start = self._next_start, (self._next_start + 1) % n
        loop = StageLoop(
            self.tables.fusion(sample),
            self.policy,
            thresholds,
            self.costs,
            1,
            num_exits=num_exits,
            arrived_s=torch.tensor([start_s], dtype=torch.float64),
            deadline_ms=torch.tensor([math.inf if deadline is None else deadline], dtype=torch.float64),
            start=start,
        )
        woken: list[int] = []
        while True:
            e, last = loop.next_step.exit, loop.last_step
            # A device unusable now (or lost earlier) before its turn does not answer.
            due = {b: r for b, r in loop.due().items() if b in active and c.health.usable[b]}
            step_start = env.now
            if eager:
                for b, r in due.items():
                    if r.start == 0:
                        arrivals[b] = [env.event() for _ in range(num_exits)]
                        cancelled[b] = False
                        env.process(self._eager_worker(b, arrivals[b], cancelled))
                pending = {b: arrivals[b][e] for b in due}
            else:
                pending = {b: env.process(self._stages(b, r)) for b, r in due.items()}
            woken += [b for b, r in due.items() if r.start == 0]
            if pending:
                longest = max(len(r) for r in due.values())
                yield simpy.AnyOf(
                    env,
                    [simpy.AllOf(env, pending.values()), env.timeout(longest * c.scenario.stage_timeout_ms / 1000)],
                )
            answered = [b for b in due if pending[b].triggered and pending[b].value]
            for b in set(due) - set(answered):
                c.health.failed(b)
                if eager:
                    cancelled[b] = True
            active = [b for b in active if b not in due or b in answered]
            stage_ms = (env.now - step_start) * 1000
            # The coordinator's time for the head: at every step for a policy that reads
            # them, else (full execution) only where the request leaves.
            if self.policy.reads_exits or last:
                yield _coordinator_time(c, meta.head_macs[e])
            try:
                loop.step(e, self.tables.sample_vectors(sample, e, answered), stage_ms=stage_ms, now_s=env.now)
            except NoBranchAnswered:
                return _failed(sample)
            if loop.done:
                break
        out = loop.result()
        if not self.policy.reads_exits and not last:  # stopped by the deadline
            yield _coordinator_time(c, meta.head_macs[e])
        for b in woken:
            if b not in active:
                continue
            if eager:
                env.process(self._cancel(b, cancelled))
            elif loop.ran_to[b] < num_exits - 1:
                env.process(c.network.transfer(b, "down", CONTROL_BYTES))
        prediction = int(out.predictions[0])
        return Done(
            sample,
            env.now - start_s,
            prediction == int(c.trace.labels[sample]),
            e,
            out.branches[0],
            coordinator_macs=float(out.head_macs[0]),
            prediction=prediction,
            macs=int(out.macs[0]),
            stop_reason=out.reason[0],
        )


# -- Baselines --------------------------------------------------------------------------


def teacher_request(c: Cluster, sample: int) -> Generator:
    """The whole teacher on device 0: input down, compute, logits up."""
    start, meta = c.env.now, c.trace.meta
    yield _admit(c)
    yield from c.network.transfer(0, "down", meta.input_bytes)
    ok = yield c.env.process(c.devices[0].compute(sum(meta.teacher_block_macs)))
    if not ok:
        return _failed(sample)
    yield from c.network.transfer(0, "up", meta.num_classes * 4)
    correct = int(c.trace.teacher_logits[sample].argmax()) == int(c.trace.labels[sample])
    return Done(sample, c.env.now - start, correct)


def pipeline_partition(block_macs: list[int], parts: int) -> list[int]:
    """Cut points: block counts ending each of ``parts`` contiguous segments of about equal MACs."""
    parts = min(parts, len(block_macs))
    cum = np.cumsum(block_macs)
    cuts = []
    for k in range(1, parts):
        cut = int(np.searchsorted(cum, cum[-1] * k / parts)) + 1
        lo = cuts[-1] + 1 if cuts else 1
        cuts.append(min(max(cut, lo), len(block_macs) - (parts - k)))
    return [*cuts, len(block_macs)]


def pipeline_request(c: Cluster, sample: int, cuts: list[int]) -> Generator:
    """The teacher split layer-wise over the devices: activations hop device to device."""
    start, meta = c.env.now, c.trace.meta
    yield _admit(c)
    yield from c.network.transfer(0, "down", meta.input_bytes)
    begin = 0
    for d, end in enumerate(cuts):
        ok = yield c.env.process(c.devices[d].compute(sum(meta.teacher_block_macs[begin:end])))
        if not ok:
            return _failed(sample)
        if d + 1 < len(cuts):
            yield from c.network.device_to_device(d, d + 1, meta.teacher_block_bytes[end - 1])
        begin = end
    yield from c.network.transfer(len(cuts) - 1, "up", meta.num_classes * 4)
    correct = int(c.trace.teacher_logits[sample].argmax()) == int(c.trace.labels[sample])
    return Done(sample, c.env.now - start, correct)


def single_device_exits(trace: Trace) -> np.ndarray:
    """The exit (N,) the single-device baseline takes for each sample (max-prob, calibrated)."""
    logits = trace.teacher_exit_logits.float()
    scores = exit_scores(MaxProb(), ExitRecords(logits))
    return first_passing(scores.double().numpy(), trace.meta.teacher_exit_thresholds)


def single_device_request(c: Cluster, sample: int, exits: np.ndarray) -> Generator:
    """The teacher with exit heads on device 0, stopping at the sample's exit (``exits[sample]``)."""
    start, meta = c.env.now, c.trace.meta
    exit_index = int(exits[sample])
    yield _admit(c)
    yield from c.network.transfer(0, "down", meta.input_bytes)
    end = meta.teacher_exit_points[exit_index]
    macs = sum(meta.teacher_block_macs[:end]) + sum(meta.teacher_exit_macs[: exit_index + 1])
    ok = yield c.env.process(c.devices[0].compute(macs))
    if not ok:
        return _failed(sample)
    yield from c.network.transfer(0, "up", meta.num_classes * 4)
    pred = int(c.trace.teacher_exit_logits[exit_index, sample].argmax())
    return Done(sample, c.env.now - start, pred == int(c.trace.labels[sample]), exit_index)
