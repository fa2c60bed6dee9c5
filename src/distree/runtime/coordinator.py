"""``distree serve``: the coordinator.

Holds the exit heads and the calibrated policy: a run's heads in PyTorch, or an export's
in onnxruntime with no torch in the process (``ServedModel``). For every input it runs
the stage loop:
send the input to every usable worker (or, under a schedule over depth and devices, to
the first of its wake order, waking the others only if it goes on), gather pooled vectors
stage by stage with a per-stage deadline, fuse those that arrived, apply the policy, and
on exit tell the workers to drop the request. A worker that fails or misses a deadline
is left out of that request and retried with back-off until healthy again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from distree.exits import Array
from distree.inference.costs import ExitCosts
from distree.inference.stage_loop import NoBranchAnswered, StageLoop
from distree.policies import DEFAULT_POLICY, make_policy
from distree.policies.calibration_file import model_thresholds
from distree.policies.scores import softmax
from distree.runtime import metrics
from distree.runtime.batching import RowQueue
from distree.runtime.health import NOT_SERVING, SERVING, serve_until_stopped, set_health, start_server
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import ServerLimits, TLSFiles
from distree.runtime.served_model import ServedModel
from distree.runtime.tensors import InvalidTensor, array_from_proto, to_proto
from distree.runtime.worker_link import LinkOptions, WorkerLink

log = logging.getLogger("distree.coordinator")

MODES = ("lockstep", "eager")
MAX_INPUTS = 4096
MAX_STREAM_CALLS = 256  # calls in flight on one InferStream (running, or answered and not yet sent)


class NoBranchError(RuntimeError):
    """No branch answered a stage, so there is nothing to fuse."""


@dataclass(frozen=True)
class CoordinatorOptions:
    """How the coordinator runs requests."""

    mode: str = "lockstep"
    policy: str = DEFAULT_POLICY
    stage_timeout_ms: float = 1000.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    max_group_inputs: int = 128  # inputs of waiting calls that start together
    max_groups: int = 4  # groups in flight at once
    min_group_inputs: int = 32  # inputs a group needs to start at once while others run
    max_group_wait_ms: float = 50.0  # ...or the longest a call waits for more to join it
    max_queued_inputs: int = 8 * MAX_INPUTS  # inputs of calls waiting to start; more: RESOURCE_EXHAUSTED
    # Wake every device for every input even where the calibration holds a schedule over
    # depth and devices (lower latency for hard inputs, more work per input).
    depth_only: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not make_policy(self.policy).servable:
            raise ValueError(f"the {self.policy} policy reads the labels; it exists for offline evaluation only")
        if self.stage_timeout_ms <= 0:
            raise ValueError("the stage timeout must be positive")
        if min(self.max_group_inputs, self.max_groups, self.min_group_inputs, self.max_queued_inputs) < 1:
            raise ValueError("max_group_inputs, min_group_inputs, max_groups and max_queued_inputs must be at least 1")
        if not 0 <= self.max_group_wait_ms < math.inf:
            raise ValueError("max_group_wait_ms must be a finite number >= 0")


@dataclass
class _Call:
    """An Infer call waiting for its group."""

    images: np.ndarray
    arrived: float  # perf_counter seconds
    deadline_ms: float  # inf for none
    future: asyncio.Future  # cancelled when the client cancels the call or its deadline passes

    @property
    def abandoned(self) -> bool:
        """Whether nobody waits for the answer any more."""
        return self.future.cancelled()


def fill_wait_s(oldest_arrived: float | None, rows: int, min_rows: int, max_wait_s: float, now: float) -> float | None:
    """While groups run: how much longer the waiting calls (``rows`` inputs, the oldest
    arrived at ``oldest_arrived``) wait for more to join them before their group starts
    anyway. 0: start now (``min_rows`` wait, or the oldest has waited ``max_wait_s``);
    None: nothing waits."""
    if oldest_arrived is None:
        return None
    if rows >= min_rows:
        return 0.0
    return max(0.0, oldest_arrived + max_wait_s - now)


class _CallAnswers:
    """The calls of one group, each answered once all its rows have exited (the rows are
    the calls' inputs in order)."""

    def __init__(self, calls: list[_Call]):
        self.calls = calls
        self.owner: list[int] = []  # the call of each row
        self._first: list[int] = []  # the row of each call's first input
        for i, c in enumerate(calls):
            self._first.append(len(self.owner))
            self.owner += [i] * len(c.images)
        self._running = [len(c.images) for c in calls]  # rows of each call not yet exited
        self._results: list[list[pb.InferResult | None]] = [[None] * len(c.images) for c in calls]

    def answer(self, rows: list[int], results: list[pb.InferResult]) -> None:
        """Rows that exited, with their results; answers the calls they complete."""
        for r, result in zip(rows, results, strict=True):
            i = self.owner[r]
            self._results[i][r - self._first[i]] = result
            self._running[i] -= 1
            if not self._running[i] and not self.calls[i].future.done():
                self.calls[i].future.set_result(self._results[i])

    def fail(self, err: Exception) -> None:
        """Every call not answered yet gets ``err``."""
        for c in self.calls:
            if not c.future.done():
                c.future.set_exception(err)


def _rows_of(images: np.ndarray, alive: np.ndarray) -> np.ndarray:
    return images if alive.shape[0] == images.shape[0] else images[alive]


class _Lockstep:
    """How stages reach the workers in lockstep mode: a worker runs a stage only once the
    loop has asked for it, for the rows still running; a worker woken late runs from stage
    0, one stage at a time, on the images of those rows."""

    def __init__(self, group_id: str, images: np.ndarray, num_exits: int):
        self.group_id = group_id
        self.images = images
        self.held: dict[WorkerLink, np.ndarray] = {}  # the rows each worker's state holds
        self._catching_up: list[asyncio.Task] = []

    def reach(self, w: WorkerLink, stages: range, alive: np.ndarray) -> asyncio.Future:
        """Run ``stages`` on ``w`` for the rows ``alive``; the last one's reply."""
        if len(stages) == 1:  # the common case, without a task of its own
            return w.run_stage(self._request(w, stages[0], alive))
        self.held.setdefault(w, alive)  # known at once: the group's end drops it in any case
        task = asyncio.ensure_future(self._in_turn(w, stages, alive))
        self._catching_up.append(task)
        return task

    async def _in_turn(self, w: WorkerLink, stages: range, alive: np.ndarray) -> pb.StageReply:
        for k in stages:
            reply = await w.run_stage(self._request(w, k, alive))
        return reply

    def _request(self, w: WorkerLink, k: int, alive: np.ndarray) -> pb.StageRequest:
        held, self.held[w] = self.held.get(w), alive
        if k == 0:
            return pb.StageRequest(group_id=self.group_id, stage=0, input=to_proto(_rows_of(self.images, alive)))
        keep = [] if held.shape[0] == alive.shape[0] else np.flatnonzero(np.isin(held, alive)).tolist()
        return pb.StageRequest(group_id=self.group_id, stage=k, keep=keep)

    def rows(self, w: WorkerLink) -> int:
        return self.held[w].shape[0]

    def running(self, w: WorkerLink, vectors: Array, alive: np.ndarray) -> Array:
        return vectors  # the worker ran exactly the running rows

    def close(self) -> None:
        for t in self._catching_up:
            if not t.cancel() and not t.cancelled():
                t.exception()  # a stage that failed after the answer is no news


class _Eager:
    """How stages reach the workers in eager mode: a worker, once woken, runs on through
    every stage for the rows running then, sending each stage's vectors as they are ready
    (one future per stage)."""

    def __init__(self, group_id: str, images: np.ndarray, num_exits: int):
        self.group_id = group_id
        self.images = images
        self.num_exits = num_exits
        self.held: dict[WorkerLink, np.ndarray] = {}
        self.ahead: dict[WorkerLink, list[asyncio.Future]] = {}

    def reach(self, w: WorkerLink, stages: range, alive: np.ndarray) -> asyncio.Future:
        if stages.start == 0:
            first = pb.StageRequest(group_id=self.group_id, stage=0, input=to_proto(_rows_of(self.images, alive)))
            self.ahead[w] = w.run_on(first, self.num_exits)
            self.held[w] = alive
        if len(stages) == 1:
            return self.ahead[w][stages[0]]
        # A worker that fails a stage it catches up on never sends the later ones: its
        # error, not the deadline, ends the wait.
        return asyncio.ensure_future(self._last_of(self.ahead[w][stages.start : stages.stop]))

    @staticmethod
    async def _last_of(futures: list[asyncio.Future]) -> pb.StageReply:
        for f in futures:
            reply = await f
        return reply

    def rows(self, w: WorkerLink) -> int:
        return self.held[w].shape[0]

    def running(self, w: WorkerLink, vectors: Array, alive: np.ndarray) -> Array:
        held = self.held[w]
        if held.shape[0] == alive.shape[0]:
            return vectors
        return vectors[np.searchsorted(held, alive)]

    def close(self) -> None:
        for futures in self.ahead.values():
            for f in futures:
                if not f.cancel() and not f.cancelled():
                    f.exception()  # a stage that failed after the answer is no news


class Refused(Exception):
    """A call answered with a status (``code``, ``details``) instead of results."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


_CODES = {c: c.value[0] for c in grpc.StatusCode}


class _InferStream:
    """The calls of one ``InferStream``: each message a task that queues its reply.

    At most ``max_calls`` calls are in flight on a stream (running, or answered and not yet
    sent): beyond it the stream is not read, so a client that sends without reading its
    replies is held back by the transport instead of filling the coordinator's memory."""

    def __init__(self, coordinator: Coordinator, max_calls: int):
        self.coordinator = coordinator
        self.replies: asyncio.Queue[pb.InferStreamReply | None] = asyncio.Queue()
        self.running: dict[int, asyncio.Task] = {}
        self.slots = asyncio.Semaphore(max_calls)  # released when a call's reply is sent
        self.malformed: str | None = None  # why the client's last message could not be read
        self._changed = asyncio.Event()  # a call ended

    async def read(self, request_iterator) -> None:
        """Take the client's messages until it ends its side, sends what cannot be read, or
        the coordinator shuts down and nothing is running any more (meanwhile new calls are
        refused and cancels are taken); then wait for the calls taken, and end the replies."""
        reading = asyncio.ensure_future(self._take_all(request_iterator))
        done = asyncio.ensure_future(self._stopped_and_idle())
        try:
            await asyncio.wait({reading, done}, return_when=asyncio.FIRST_COMPLETED)
            reading.cancel()  # shutting down, and every call answered: stop waiting for messages
            await asyncio.wait({reading})
            if not reading.cancelled():
                reading.result()  # a call that could not be taken ends the stream as it failed
            await self._idle()
        finally:
            done.cancel()
            if not reading.cancel() and not reading.cancelled():
                reading.exception()  # the read that ended the stream: no news
            self.replies.put_nowait(None)

    async def _take_all(self, request_iterator) -> None:
        """The messages, each taken as it arrives (one waiting read for the whole stream,
        not one per message: a message is a single-image call's whole cost here)."""
        messages = aiter(request_iterator)
        while True:
            await self.slots.acquire()
            try:
                m = await anext(messages)
            except StopAsyncIteration:  # the client ended its side
                self.slots.release()
                return
            except Exception as err:  # noqa: BLE001 - the stream ends with the reason, once the calls taken are answered
                self.slots.release()
                self.malformed = f"{type(err).__name__}: {err}"
                return
            except BaseException:
                self.slots.release()
                raise
            self._take(m)

    async def _stopped_and_idle(self) -> None:
        await self.coordinator.stopping.wait()
        await self._idle()

    async def _idle(self) -> None:
        """Until no call of this stream is running."""
        while self.running:
            self._changed.clear()
            await self._changed.wait()

    def _take(self, m: pb.InferStreamRequest) -> None:
        if m.cancel:
            self.slots.release()  # a cancel gets no reply
            task = self.running.get(m.id)
            if task is not None:
                task.cancel()
        elif m.id in self.running:
            self._reply(m.id, grpc.StatusCode.INVALID_ARGUMENT, f"call id {m.id} is already in flight on this stream")
        elif self.coordinator.stopping.is_set():
            metrics.REQUESTS.labels("stopping").inc(
                max(1, m.request.images.shape[0]) if len(m.request.images.shape) else 1
            )
            self._reply(m.id, grpc.StatusCode.UNAVAILABLE, "the coordinator is shutting down: send the call again")
        else:
            self.running[m.id] = asyncio.ensure_future(self._one(m.id, m.request))

    def _reply(self, call_id: int, code: grpc.StatusCode, details: str) -> None:
        self.replies.put_nowait(pb.InferStreamReply(id=call_id, code=_CODES[code], details=details))

    async def _one(self, call_id: int, request: pb.InferRequest) -> None:
        try:
            reply = pb.InferStreamReply(id=call_id, reply=await self.coordinator.answer(request))
        except Refused as refused:
            reply = pb.InferStreamReply(id=call_id, code=_CODES[refused.code], details=refused.details)
        except asyncio.CancelledError:
            reply = pb.InferStreamReply(
                id=call_id, code=_CODES[grpc.StatusCode.CANCELLED], details="cancelled by the client"
            )
        except Exception as err:  # answered UNKNOWN, as a call of its own that raised would be
            log.exception("call failed", extra={"call_id": call_id})
            reply = pb.InferStreamReply(id=call_id, code=_CODES[grpc.StatusCode.UNKNOWN], details=str(err))
        finally:
            self.running.pop(call_id, None)
            self._changed.set()
        self.replies.put_nowait(reply)

    def abandon(self) -> None:
        """The stream ended: the calls still running have nobody to answer."""
        for task in list(self.running.values()):
            task.cancel()


class Coordinator(pb_grpc.CoordinatorServicer):
    """The application-facing inference service."""

    def __init__(
        self, model: ServedModel, workers: list[str], options: CoordinatorOptions, tls: TLSFiles, token: str | None
    ):
        self.model = model
        self.options = options
        self.policy = make_policy(options.policy)
        try:
            self.thresholds = model_thresholds(self.policy, model, model.calibration)
        except ValueError as err:
            raise ValueError(f"{model.source}: {err} ({model.calibration_hint})") from None
        if options.depth_only:
            self.thresholds = self.thresholds.depth_only()
        self.costs = ExitCosts(model.macs, self.policy)
        self.exit_macs = [int(m) for m in self.costs.per_exit().tolist()]
        self.input_shape = model.input_shape
        n = model.num_branches
        if len(workers) != n:
            raise ValueError(f"{model.source} has {n} branches but {len(workers)} worker addresses were given")
        twice = sorted({a for a in workers if workers.count(a) > 1})
        if twice:
            raise ValueError(f"worker addresses given more than once: {', '.join(twice)} (one address per branch)")
        backoff = LinkOptions(options.retry_initial_s, options.retry_max_s)
        instances: dict[str, WorkerLink] = {}  # worker process -> the link that uses it
        self.links = [
            WorkerLink(a, i, tls, token, backoff, model.branch_fingerprints[i], instances)
            for i, a in enumerate(workers)
        ]
        self._queue: RowQueue[_Call] = RowQueue()
        self._slots = asyncio.Semaphore(options.max_groups)
        self._running = 0  # groups in flight
        self._next_start = 0  # the branch the next group starts on, under a schedule
        self._groups: set[asyncio.Task] = set()  # their tasks: the event loop holds only weak references
        self._admission = asyncio.Event()  # a call arrived or a group ended
        self.stopping = asyncio.Event()  # set when shutting down: new calls are refused

    async def watch_workers(self) -> None:
        """Probe workers that are down, each on its back-off schedule, and health-check the
        ones in use every ``CHECK_INTERVAL_S``: a worker that died or drains between
        requests is known before the next request needs it."""
        while True:
            now = time.monotonic()
            await asyncio.gather(
                *(w.try_connect(self.model.num_exits) for w in self.links if not w.up and now >= w.next_try),
                *(w.check() for w in self.links if w.up and now >= w.next_check),
            )
            await asyncio.sleep(0.05)

    # -- the stage loop ------------------------------------------------------------------

    async def _gather(
        self, calls: dict[WorkerLink, asyncio.Future], k: int, rows: Callable[[WorkerLink], int], stages: int = 1
    ) -> tuple[dict[WorkerLink, Array], float]:
        """Wait for stage ``k`` (``rows(w)`` vectors from worker w) from every call until
        the deadline of ``stages`` stages; drop the rest.

        Returns the vectors that arrived and the slowest worker's own stage time (ms)."""
        timeout_s = self.options.stage_timeout_ms / 1000
        done, pending = await asyncio.wait(calls.values(), timeout=timeout_s * stages)
        for t in pending:
            t.cancel()
        got = {}
        xp = self.model.fusion.xp  # the vectors go to the heads as the kind of array they take
        worker_ms = 0.0
        for w, t in calls.items():
            if t not in done:
                # Left out of this group either way; marked down only if it has gone
                # silent (a paused or cut-off device), not while it answers other stages.
                if not w.answering(timeout_s):
                    w.failed(f"missed the stage {k} deadline")
                else:
                    metrics.STAGE_DEADLINE_MISSES.labels(str(w.branch)).inc()
                continue
            err = t.exception()
            if err is not None:
                if isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("worker rejected the token", extra={"branch": w.branch})
                w.failed(str(err))
                continue
            reply = t.result()
            try:
                got[w] = xp.asarray(
                    array_from_proto(reply.pooled, f"branch {w.branch} vectors", ("float32",), (rows(w), None))
                )
                worker_ms = max(worker_ms, reply.queue_ms + reply.compute_ms)
            except InvalidTensor as bad:
                w.failed(str(bad))
        return got, worker_ms

    async def run_group(
        self,
        images: np.ndarray,
        arrived: np.ndarray,
        deadline_ms: np.ndarray,
        answer: Callable[[list[int], list[pb.InferResult]], None],
        abandoned: Callable[[], bool] = lambda: False,
    ) -> None:
        """Run a group of inputs (uint8 (B, C, H, W)) through the stage loop together.

        ``abandoned()``: checked before every step after the first; once true (no caller
        waits for any of the rows) the group stops, and the workers drop its state.

        ``arrived`` (B,) is each input's arrival (perf_counter seconds) and ``deadline_ms``
        (B,) its deadline from arrival (inf for none). Rows leave the group as they exit,
        and ``answer(rows, results)`` hears of them then, not when the group ends; the
        workers are told which rows go on with every stage. Raises NoBranchError for the
        rows still running when no branch is left."""
        gid = uuid.uuid4().hex
        rows = images.shape[0]
        up = [w for w in self.links if w.up]
        if not up:
            log.warning("group failed: no worker is up", extra={"group_id": gid, "inputs": rows})
            raise NoBranchError("no branch is available (all workers are down)")
        n, E = self.model.num_branches, self.model.num_exits
        # A schedule's steps were calibrated with every device up; with one down the group
        # wakes every device left from the start, as the depth-only policy does.
        thresholds = self.thresholds if len(up) == n else self.thresholds.depth_only()
        start, self._next_start = self._next_start, (self._next_start + 1) % n
        loop = StageLoop(
            self.model.fusion,
            self.policy,
            thresholds,
            self.costs,
            rows,
            num_exits=E,
            arrived_s=arrived,
            deadline_ms=deadline_ms,
            start=start,
        )
        links = {w.branch: w for w in up}
        sends = (_Eager if self.options.mode == "eager" else _Lockstep)(gid, images, E)
        worker_ms: list[float] = []
        try:
            while True:
                if worker_ms and abandoned():
                    metrics.GROUPS_ABANDONED.inc()
                    log.debug("group abandoned by its callers", extra={"group_id": gid, "step": len(worker_ms)})
                    return
                t0 = time.perf_counter()
                k = loop.next_step.exit
                due = loop.due()
                alive = np.asarray(loop.alive)
                # A worker down (now, or lost earlier in this group) before its turn is a
                # branch that did not answer.
                calls = {
                    links[b]: sends.reach(links[b], stages, alive)
                    for b, stages in due.items()
                    if b in links and links[b].up
                }
                got, slowest = (
                    await self._gather(calls, k, sends.rows, max(len(r) for r in due.values())) if calls else ({}, 0.0)
                )
                for w in calls:
                    if w not in got:
                        del links[w.branch]
                vectors: list[Array | None] = [None] * n
                for w, v in got.items():
                    vectors[w.branch] = sends.running(w, v, alive)
                now = time.perf_counter()
                dt = (now - t0) * 1000
                worker_ms.append(slowest)
                try:
                    # The heads are a few thousand MACs: cheaper inline than a thread hop.
                    loop.step(k, vectors, stage_ms=dt, now_s=now)
                except NoBranchAnswered:
                    log.warning("group failed: no branch answered", extra={"group_id": gid, "stage": k})
                    raise NoBranchError(f"no branch answered stage {k}") from None
                metrics.COORD_STAGE_SECONDS.labels(str(k)).observe(dt / 1000)
                if loop.left.shape[0]:
                    answer(loop.left.tolist(), self._results(gid, loop, worker_ms))
                if loop.done:
                    break
        finally:
            sends.close()
            # Workers that answered the last stage freed the state themselves; the others
            # drop it now (eager ones stop running on).
            started = list(sends.held)
            self._drop_later(gid, [w for w in started if loop.ran_to[w.branch] < E - 1 or w.branch in loop.lost])
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "group answered",
                extra={
                    "group_id": gid,
                    "inputs": rows,
                    "workers": [w.address for w in started],
                    "exits": loop.exit.tolist(),
                    "stage_ms": [round(t, 3) for t in loop.stage_ms],
                },
            )

    def _results(self, gid: str, loop: StageLoop, worker_ms: list[float]) -> list[pb.InferResult]:
        """The answers of the rows the loop's latest step stopped."""
        out = loop.exited(loop.left)
        probs = softmax(out.logits)
        exits = out.exit.tolist()
        for e, count in Counter(exits).items():
            metrics.EXITS.labels(str(e)).inc(count)
        results = []
        for e, p, prediction, reason, branches, macs in zip(
            exits, probs.tolist(), out.predictions.tolist(), out.reason, out.branches, out.macs.tolist()
        ):
            results.append(
                pb.InferResult(
                    prediction=prediction,
                    probabilities=p,
                    exit=e,
                    branches=branches,
                    stage_ms=list(loop.stage_ms),
                    stop_reason=reason.value,
                    worker_ms=list(worker_ms),
                    macs=macs,
                    group_id=gid,
                    start=loop.start,
                )
            )
        return results

    def _drop_later(self, gid: str, links: list[WorkerLink]) -> None:
        """Tell workers to drop a group, without making the answer wait for it (a dead
        worker holds nothing; a live one that misses the message expires the state)."""
        for w in links:
            w.drop(gid)

    async def _run_calls(self, calls: list[_Call]) -> None:
        """Run the Infer calls taken together as one group, and answer each call as soon as
        all its inputs have exited."""
        calls = [c for c in calls if not c.abandoned]
        answers = _CallAnswers(calls)
        try:
            if not calls:  # every caller gave up while it waited: nothing to run
                return
            images = np.concatenate([c.images for c in calls]) if len(calls) > 1 else calls[0].images
            arrived = np.array([c.arrived for c in calls], dtype=np.float64)[answers.owner]
            deadline = np.array([c.deadline_ms for c in calls], dtype=np.float64)[answers.owner]
            metrics.GROUP_INPUTS.observe(len(images))
            started = time.perf_counter()
            for c in calls:
                metrics.COORD_QUEUE_SECONDS.observe(started - c.arrived)
            await self.run_group(images, arrived, deadline, answers.answer, lambda: all(c.abandoned for c in calls))
            # Only a policy that never stops at the last exit could leave rows running.
            answers.fail(RuntimeError("the group ended with inputs that never exited"))
        except Exception as err:  # noqa: BLE001 - every call not yet answered gets the error
            answers.fail(err)
        finally:
            self._running -= 1
            self._admission.set()
            self._slots.release()

    def _fill_wait_s(self) -> float | None:
        oldest = self._queue.first()
        return fill_wait_s(
            None if oldest is None else oldest.arrived,
            self._queue.rows,
            self.options.min_group_inputs,
            self.options.max_group_wait_ms / 1000,
            time.perf_counter(),
        )

    async def admit(self) -> None:
        """Start groups: the Infer calls that wait are taken together, with at most
        ``max_groups`` groups in flight.

        An idle coordinator starts a call at once. While groups run, the calls that arrive
        wait for others to join them, until ``min_group_inputs`` inputs wait or the oldest
        has waited ``max_group_wait_ms``: calls that trickle in one by one then ride together
        and pay one stage loop between them, at a bounded delay each."""
        while True:
            await self._slots.acquire()
            try:
                while self._running and (wait := self._fill_wait_s()) != 0:
                    self._admission.clear()
                    try:
                        await asyncio.wait_for(self._admission.wait(), wait)
                    except asyncio.TimeoutError:  # not TimeoutError before Python 3.11
                        pass
                calls = await self._queue.take(self.options.max_group_inputs)
            except asyncio.CancelledError:
                self._slots.release()
                raise
            self._running += 1
            task = asyncio.ensure_future(self._run_calls(calls))
            self._groups.add(task)
            task.add_done_callback(self._groups.discard)

    # -- RPCs --------------------------------------------------------------------------

    async def answer(self, request: pb.InferRequest) -> pb.InferReply:
        """Answer a batch of inputs; they run with the other calls waiting at the time.
        Raises ``Refused`` for a call answered with a status instead (bad input, a full
        queue, no branch), whether it came as a call of its own or on a stream."""
        try:
            images = array_from_proto(
                request.images, "images", ("uint8",), (None, *self.input_shape), MAX_INPUTS * 4096 * 3
            )
        except InvalidTensor as err:
            metrics.REQUESTS.labels("invalid").inc()
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        if images.shape[0] > MAX_INPUTS:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_INPUTS} inputs per call")
        if request.deadline_ms < 0 or not math.isfinite(request.deadline_ms):
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "deadline_ms must be a finite number >= 0")
        limit = self.options.max_queued_inputs
        # An idle queue takes any call (a call may be larger than the bound).
        if self._queue.rows and self._queue.rows + images.shape[0] > limit:
            metrics.REQUESTS.labels("refused").inc(images.shape[0])
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the coordinator has {self._queue.rows} inputs waiting to start (at most {limit}): try again later",
            )
        t0 = time.perf_counter()
        # A large call goes in groups of at most max_group_inputs: no group's stage takes
        # the workers past the stage deadline, and other calls' groups run in between.
        loop = asyncio.get_running_loop()
        deadline = request.deadline_ms or math.inf
        size = self.options.max_group_inputs
        calls = [_Call(images[i : i + size], t0, deadline, loop.create_future()) for i in range(0, len(images), size)]
        # The call's groups are queued under one key: the groups of different calls start in
        # turn, so a large call does not hold back the calls that arrive after it.
        key = object()
        for call in calls:
            self._queue.put(call, len(call.images), key)
        self._admission.set()
        try:
            parts = await asyncio.gather(*(c.future for c in calls), return_exceptions=True)
        except asyncio.CancelledError:  # the client gave up: its groups still queued never start
            self._queue.discard(key)
            raise
        failed = next((p for p in parts if isinstance(p, BaseException)), None)
        if isinstance(failed, NoBranchError):
            metrics.REQUESTS.labels("no-branch").inc(len(images))
            raise Refused(grpc.StatusCode.UNAVAILABLE, str(failed))
        if failed is not None:
            raise failed
        results = [r for part in parts for r in part]
        metrics.REQUESTS.labels("ok").inc(len(images))
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - t0)
        return pb.InferReply(results=results)

    async def Infer(self, request, context):  # noqa: N802 - gRPC method name
        """One call: ``answer`` it, or end it with the status it was refused with."""
        try:
            return await self.answer(request)
        except Refused as refused:
            await context.abort(refused.code, refused.details)

    async def InferStream(self, request_iterator, context):  # noqa: N802 - gRPC method name
        """Calls on one stream (``InferStreamRequest``), each answered as it finishes, with
        its id and status. When the client ends its side, the stream ends once every call
        taken is answered; when the client goes away, its calls are abandoned (they stop
        costing the workers as a cancelled call does)."""
        stream = _InferStream(self, MAX_STREAM_CALLS)
        reader = asyncio.ensure_future(stream.read(request_iterator))
        try:
            while (reply := await stream.replies.get()) is not None:
                yield reply
                stream.slots.release()
            await reader
        finally:
            reader.cancel()
            stream.abandon()
        if stream.malformed is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a message on the stream: {stream.malformed}")

    def stop_admitting(self) -> None:
        """Shutting down: calls that arrive on a stream from now on are refused with
        UNAVAILABLE, and streams end once they have answered the calls they took (the
        server itself refuses new calls of their own)."""
        self.stopping.set()

    async def ModelInfo(self, request, context):  # noqa: N802
        """Shapes, classes, exits, policy, schedule and per-exit MACs of the served model."""
        m = self.model
        return pb.ModelInfoReply(
            in_channels=m.input_shape[0],
            image_size=m.input_shape[1],
            classes=m.classes,
            num_exits=m.num_exits,
            num_branches=m.num_branches,
            policy=self.options.policy,
            mode=self.options.mode,
            exit_macs=self.exit_macs,
            full_macs=int(m.macs.full()),
            schedule="" if self.thresholds.schedule is None else self.thresholds.schedule.label,
        )


async def serve_coordinator(
    model: ServedModel,
    workers: list[str],
    listen: str,
    options: CoordinatorOptions,
    token: str | None = None,
    tls: TLSFiles = TLSFiles(),
    worker_tls: TLSFiles = TLSFiles(),
    grace_s: float = 5.0,
    limits: ServerLimits = ServerLimits(),
) -> None:
    """Serve until stopped (``serve_until_stopped``); SERVING while at least one worker is
    usable, NOT_SERVING while none is."""
    coord = Coordinator(model, workers, options, worker_tls, token)
    server, health_servicer, port = await start_server(
        lambda srv: pb_grpc.add_CoordinatorServicer_to_server(coord, srv),
        listen,
        token,
        tls,
        limits,
        f"coordinator#{uuid.uuid4().hex}",
    )

    async def track_health() -> None:
        serving = False
        while True:
            up = sum(w.up for w in coord.links)
            if bool(up) != serving:
                serving = bool(up)
                await set_health(health_servicer, SERVING if serving else NOT_SERVING)
                if serving:
                    log.info("serving", extra={"workers_up": up})
                else:
                    log.warning("not serving: no worker is up")
            await asyncio.sleep(0.05)

    tasks = [asyncio.ensure_future(t) for t in (coord.watch_workers(), coord.admit(), track_health())]
    schedule = coord.thresholds.schedule
    log.info(
        "listening",
        extra={
            "address": listen,
            "port": port,
            "mode": options.mode,
            "policy": options.policy,
            "schedule": "depth only" if schedule is None else schedule.label,
        },
    )
    try:
        await serve_until_stopped(server, health_servicer, grace_s, log, coord.stop_admitting)
    finally:
        for t in tasks:
            t.cancel()
