"""``distree worker``: one device, one branch, stages run on request.

The service checks every stage request and answers it; each group's feature map stays
here between stages (``state_store.py``), and the stages run batched with the other
groups waiting at the same stage (``stage_runner.py``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
import uuid
from dataclasses import dataclass

import grpc
import numpy as np

from distree.runtime import metrics
from distree.runtime.health import SERVING, serve_until_stopped, set_health, start_server
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import ServerLimits, TLSFiles
from distree.runtime.stage_runner import StageBackend, StageRunner
from distree.runtime.state_store import BUSY, GroupState, StateStore, StoreFull
from distree.runtime.tensors import InvalidTensor, array_from_proto, to_proto

log = logging.getLogger("distree.worker")


MAX_ROWS = 4096  # inputs per group


class StageError(Exception):
    """A group's stage cannot run; carries the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _rows_to_keep(keep, rows: int) -> np.ndarray:
    """The ``keep`` list of a StageRequest as an index, checked against ``rows``."""
    idx = np.asarray(list(keep), dtype=np.int64)
    if int(idx.min()) < 0 or int(idx.max()) >= rows or (idx.size > 1 and not bool((idx[1:] > idx[:-1]).all())):
        raise StageError(
            grpc.StatusCode.INVALID_ARGUMENT, f"keep must list distinct rows in 0..{rows - 1} in ascending order"
        )
    return idx


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker serves its branch."""

    max_batch: int = 128  # most inputs (rows) in one forward pass
    max_wait_ms: float = 0.0
    state_ttl_s: float = 30.0
    max_states: int = 4096  # groups holding state at once
    max_state_mib: float = 1024.0  # their feature maps' bytes
    # The same per Session stream (one per coordinator); None: the worker's limits.
    max_session_states: int | None = None
    max_session_state_mib: float | None = None

    def __post_init__(self) -> None:
        session_states = 1 if self.max_session_states is None else self.max_session_states
        if min(self.max_batch, self.max_states, session_states) < 1:
            raise ValueError("--max-batch, --max-states and --max-session-states must be at least 1")
        if not (self.max_wait_ms >= 0 and self.state_ttl_s > 0 and self.max_state_mib > 0):
            raise ValueError("--max-wait-ms must be >= 0, --state-ttl-s and --max-state-mib positive")
        if self.max_session_state_mib is not None and not self.max_session_state_mib > 0:
            raise ValueError("--max-session-state-mib must be positive")


class BranchWorker(pb_grpc.WorkerServicer):
    """The Worker service of one branch: checks each stage request, keeps the request's
    state between stages (``StateStore``) and runs the stage (``StageRunner``)."""

    def __init__(self, backend: StageBackend, branch: int, options: WorkerOptions):
        self.runner = StageRunner(backend, branch, options.max_batch, options.max_wait_ms)
        mib = options.max_session_state_mib
        self.states = StateStore(
            str(branch),
            options.state_ttl_s,
            options.max_states,
            int(options.max_state_mib * 2**20),
            max_session_states=options.max_session_states,
            max_session_bytes=None if mib is None else int(mib * 2**20),
        )
        self.branch_index = branch
        self.instance = uuid.uuid4().hex  # this process, whatever address it is reached by
        self.label = str(branch)
        self.ready = False
        self.num_stages = self.runner.num_stages
        self.input_shape = self.runner.input_shape

    def load(self) -> None:
        """Load the branch's weights and warm it up."""
        self.runner.load()

    def start(self) -> None:
        """Start batching and expiring (inside the event loop)."""
        self.runner.start()
        self.states.start()

    def stop(self) -> None:
        """Stop background tasks and the compute thread."""
        self.runner.stop()
        self.states.stop()

    def _drop(self, group_id: str, reason: str) -> bool:
        return self.states.drop(group_id, reason)

    async def _stage(self, request: pb.StageRequest, stage: int, session: object = None) -> pb.StageReply:
        """Run one stage of one group; raises StageError for a group it cannot run."""
        gid = request.group_id
        if not self.ready:
            raise StageError(grpc.StatusCode.UNAVAILABLE, "worker is still loading its weights")
        if not gid:
            raise StageError(grpc.StatusCode.INVALID_ARGUMENT, "group_id is empty")
        if not 0 <= stage < self.num_stages:
            raise StageError(grpc.StatusCode.INVALID_ARGUMENT, f"stage {stage} not in 0..{self.num_stages - 1}")
        if stage == 0:
            if gid in self.states:
                raise StageError(grpc.StatusCode.ALREADY_EXISTS, f"group {gid} already started")
            try:
                shape = (None, *self.input_shape)
                x = array_from_proto(request.input, "input", ("uint8",), shape, MAX_ROWS * 4096 * 3)
            except InvalidTensor as err:
                raise StageError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
            if x.shape[0] > MAX_ROWS:
                raise StageError(grpc.StatusCode.INVALID_ARGUMENT, f"input: at most {MAX_ROWS} rows per group")
            try:
                self.states.put(gid, GroupState(0, self.runner.backend.as_input(x), session))
            except StoreFull as err:
                raise StageError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err)) from None
        state = self.states.get(gid)
        if state is None:
            raise StageError(grpc.StatusCode.FAILED_PRECONDITION, f"no state for group {gid} (dropped or expired)")
        if state.next_stage == BUSY:
            raise StageError(grpc.StatusCode.FAILED_PRECONDITION, f"group {gid} is already running a stage")
        if state.next_stage != stage:
            raise StageError(
                grpc.StatusCode.FAILED_PRECONDITION, f"group {gid} is at stage {state.next_stage}, not {stage}"
            )
        x = state.activation
        if request.keep:
            x = x[_rows_to_keep(request.keep, x.shape[0])]
        t0 = time.perf_counter()
        state.next_stage = BUSY  # a second call for this stage, racing this one, is refused
        try:
            h, v, compute_ms = await self.runner.run(stage, x)
        except asyncio.CancelledError:
            self._drop(gid, "cancel")
            raise
        except Exception:
            state.next_stage = stage
            raise
        if gid in self.states:  # a Drop may have arrived meanwhile
            if stage == self.num_stages - 1:
                self.states.finish(gid)
            else:
                state.activation, state.next_stage, state.touched = h, stage + 1, time.monotonic()
        queue_ms = max(0.0, (time.perf_counter() - t0) * 1000 - compute_ms)
        metrics.QUEUE_SECONDS.labels(self.label, str(stage)).observe(queue_ms / 1000)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "stage run",
                extra={"group_id": gid, "stage": stage, "rows": x.shape[0], "compute_ms": round(compute_ms, 3)}
                | {"queue_ms": round(queue_ms, 3)},
            )
        return pb.StageReply(stage=stage, pooled=to_proto(v), compute_ms=compute_ms, queue_ms=queue_ms, group_id=gid)

    async def _run_batch(self, batch: pb.StageBatch, session: object = None) -> pb.StageBatchReply:
        """Drop the listed groups, then run one stage of each listed group, batched;
        a group that cannot run gets its own error."""
        for gid in batch.drop:
            self._drop(gid, "stop")

        async def one(item: pb.StageRequest) -> pb.StageReply:
            try:
                if item.run_on and session is None:
                    raise StageError(grpc.StatusCode.INVALID_ARGUMENT, "run_on needs a Session stream")
                return await self._stage(item, item.stage, session)
            except StageError as err:
                return pb.StageReply(stage=item.stage, group_id=item.group_id, error=err.message)

        if len(batch.items) == 1:  # the common case at low load: no task per item
            return pb.StageBatchReply(items=[await one(batch.items[0])], seq=batch.seq)
        return pb.StageBatchReply(items=await asyncio.gather(*(one(i) for i in batch.items)), seq=batch.seq)

    async def Session(self, request_iterator, context):  # noqa: N802
        """Both modes over one stream: every StageBatch gets its reply as soon as it is done
        (batches run concurrently), and a ``run_on`` item (eager) one more reply per later
        stage, until it is dropped. When it ends, the groups it started are dropped at
        once (the coordinator died or cancelled it), unless a batch said ``handover``: then
        they live on, reached through the coordinator's next session."""
        session = object()
        handover = False
        replies: asyncio.Queue[pb.StageBatchReply | None] = asyncio.Queue()
        running: set[asyncio.Task] = set()

        async def run(batch: pb.StageBatch) -> None:
            try:
                reply = await self._run_batch(batch, session)
            except Exception as err:  # any error: the batch is answered, the stream lives
                log.exception("stage batch failed")
                items = [pb.StageReply(stage=i.stage, group_id=i.group_id, error=str(err)) for i in batch.items]
                replies.put_nowait(pb.StageBatchReply(items=items, seq=batch.seq))
                return
            replies.put_nowait(reply)
            for item, answer in zip(batch.items, reply.items):
                if item.run_on and not answer.error:
                    spawn(run_on(item.group_id, item.stage + 1, batch.seq))

        async def run_on(gid: str, first: int, seq: int) -> None:
            """Eager: the group's later stages, one reply each, until it is dropped."""
            for k in range(first, self.num_stages):
                try:
                    answer = await self._stage(pb.StageRequest(group_id=gid, stage=k), k, session)
                except StageError:
                    return  # dropped (the coordinator has its answer) or expired
                except Exception as err:  # any error: the coordinator hears of it
                    log.exception("stage failed")
                    answer = pb.StageReply(stage=k, group_id=gid, error=str(err))
                replies.put_nowait(pb.StageBatchReply(items=[answer], seq=seq))
                if answer.error:
                    return

        def spawn(coro) -> None:
            task = asyncio.ensure_future(coro)
            running.add(task)
            task.add_done_callback(running.discard)

        async def read() -> None:
            nonlocal handover
            try:
                async for batch in request_iterator:
                    handover = handover or batch.handover
                    spawn(run(batch))
                while running:  # (eager followers may start while we wait)
                    await asyncio.wait(set(running))
            finally:
                replies.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()
            # (A cancelled stream ends the request iterator like a closed one: only the
            # handover flag tells the two apart.)
            if not handover:
                self.states.drop_session(session)

    async def Info(self, request, context):  # noqa: N802
        """Branch index and counters."""
        return pb.InfoReply(
            branch=self.branch_index,
            num_stages=self.num_stages,
            stages_run=self.runner.stages_run,
            macs_run=self.runner.macs_run,
            states_dropped=self.states.dropped,
            states_expired=self.states.expired,
            active_states=len(self.states),
            fingerprint=self.runner.fingerprint,
            instance=self.instance,
            backend=self.runner.backend.description,
            peak_rss_mib=peak_rss_mib(),
        )


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class WorkerDebug(pb_grpc.WorkerDebugServicer):
    """Call-by-call access to a worker's stages (``--debug-rpcs``): what tests and
    measurements drive directly; the coordinator uses ``Session`` only."""

    def __init__(self, worker: BranchWorker):
        self.worker = worker

    async def RunStage(self, request, context):  # noqa: N802 - gRPC method name
        """Run one stage of one group (group) in its own call."""
        try:
            return await self.worker._stage(request, request.stage)
        except StageError as err:
            await context.abort(err.code, err.message)

    async def RunStages(self, request, context):  # noqa: N802
        """One StageBatch in one unary call."""
        return await self.worker._run_batch(request)

    async def Drop(self, request, context):  # noqa: N802
        """Forget a group's state."""
        return pb.DropReply(dropped=self.worker._drop(request.group_id, "stop"))


async def serve_worker(
    backend: StageBackend,
    branch: int,
    listen: str,
    options: WorkerOptions,
    token: str | None = None,
    tls: TLSFiles = TLSFiles(),
    ready: asyncio.Event | None = None,
    debug_rpcs: bool = False,
    grace_s: float = 5.0,
    limits: ServerLimits = ServerLimits(),
) -> None:
    """Serve until cancelled; health is NOT_SERVING until the weights are loaded and warm.
    ``debug_rpcs`` adds the WorkerDebug service."""
    worker = BranchWorker(backend, branch, options)

    def add(srv) -> None:
        pb_grpc.add_WorkerServicer_to_server(worker, srv)
        if debug_rpcs:
            pb_grpc.add_WorkerDebugServicer_to_server(WorkerDebug(worker), srv)

    server, health_servicer, port = await start_server(
        add, listen, token, tls, limits, identity=f"worker/{branch}#{worker.instance}"
    )
    log.info("listening", extra={"address": listen, "port": port, "branch": branch})
    await asyncio.to_thread(worker.load)
    worker.start()
    worker.ready = True
    await set_health(health_servicer, SERVING)
    log.info("serving", extra={"branch": branch, "stages": worker.num_stages})
    if ready is not None:
        ready.set()
    try:
        await serve_until_stopped(server, health_servicer, grace_s, log)
    finally:
        worker.stop()
