"""``distree serve``: the coordinator.

Holds the exit heads and the calibrated policy. For every input it runs the stage loop:
send the input to every usable worker, gather pooled vectors stage by stage with a
per-stage deadline, fuse those that arrived, apply the policy, and on exit tell the
workers to drop the request. A worker that fails or misses a deadline is left out of
that request and retried with back-off until healthy again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distree.evaluation.policies import exit_costs, load_calibration, thresholds_for
from distree.policies import make_policy, should_stop_for_deadline
from distree.run import RunDir
from distree.runtime import metrics
from distree.runtime.health import SERVING, set_health, start_server
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import TLSFiles, call_metadata, make_channel
from distree.runtime.tensors import InvalidTensor, from_proto, to_proto
from distree.training.checkpoint import load_weights

log = logging.getLogger("distree.coordinator")

MODES = ("lockstep", "eager")
MAX_INPUTS = 4096


class NoBranchError(RuntimeError):
    """No branch answered a stage, so there is nothing to fuse."""


@dataclass(frozen=True)
class CoordinatorOptions:
    """How the coordinator runs requests."""

    mode: str = "lockstep"
    policy: str = "feature-diff"
    stage_timeout_ms: float = 1000.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.policy == "oracle":
            raise ValueError("the oracle policy needs labels; it exists for offline evaluation only")
        if self.stage_timeout_ms <= 0:
            raise ValueError("the stage timeout must be positive")


class WorkerLink:
    """One connection to one worker, with its health and retry back-off."""

    def __init__(self, address: str, position: int, tls: TLSFiles, token: str | None, opts: CoordinatorOptions):
        self.address = address
        self.branch = position  # confirmed by Info once reachable
        self.channel = make_channel(address, tls)
        self.stub = pb_grpc.WorkerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = call_metadata(token)
        self.up = False
        self._opts = opts
        self._backoff = opts.retry_initial_s
        self.next_try = 0.0
        self._pending: list[tuple[pb.StageRequest, asyncio.Future]] = []
        self._drops: list[str] = []
        self._flush_scheduled = False

    # Under load many requests reach the same point in one turn of the event loop; their
    # stages (and drops) go to the worker in one RunStages call instead of one call each,
    # which is what keeps the per-call cost of gRPC off the per-request path.
    def run_stage(self, request: pb.StageRequest, timeout: float) -> asyncio.Future:
        """Queue one request's stage for this worker; the future gets its StageReply."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        self._schedule_flush(timeout)
        return fut

    def drop(self, request_id: str) -> None:
        """Queue a request for the worker to forget (sent with the next batch)."""
        self._drops.append(request_id)
        self._schedule_flush(1.0)

    def _schedule_flush(self, timeout: float) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, timeout)

    def _flush(self, timeout: float) -> None:
        self._flush_scheduled = False
        items, self._pending = self._pending, []
        drops, self._drops = self._drops, []
        if items or drops:
            asyncio.ensure_future(self._send(items, drops, timeout))

    async def _send(self, items: list[tuple[pb.StageRequest, asyncio.Future]], drops: list[str], timeout: float):
        batch = pb.StageBatch(items=[r for r, _ in items], drop=drops)
        try:
            reply = await self.stub.RunStages(batch, timeout=timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as err:
            for _, f in items:
                if not f.done():
                    f.set_exception(err)
            return
        for (_, f), r in zip(items, reply.items):
            if not f.done():
                if r.error:
                    f.set_exception(RuntimeError(r.error))
                else:
                    f.set_result(r)

    def failed(self, why: str) -> None:
        """Stop using the worker until a health check passes."""
        if self.up:
            log.warning("worker down", extra={"device": self.branch, "address": self.address, "why": why})
        metrics.WORKER_FAILURES.labels(str(self.branch)).inc()
        metrics.WORKER_UP.labels(str(self.branch)).set(0)
        self.up = False
        self.next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._opts.retry_max_s)

    async def probe(self, num_stages: int) -> None:
        """Health-check a worker that is down; use it again once it serves."""
        try:
            h = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            if h.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError("not serving yet")
            info = await self.stub.Info(pb.InfoRequest(), timeout=1.0, metadata=self.metadata)
            if info.num_stages != num_stages:
                raise RuntimeError(f"worker has {info.num_stages} stages, the model {num_stages}")
            self.branch = info.branch
        except (grpc.aio.AioRpcError, RuntimeError) as err:
            self.failed(str(err.details() if isinstance(err, grpc.aio.AioRpcError) else err))
            return
        self.up = True
        self._backoff = self._opts.retry_initial_s
        metrics.WORKER_UP.labels(str(self.branch)).set(1)
        log.info("worker up", extra={"device": self.branch, "address": self.address})


class Coordinator(pb_grpc.CoordinatorServicer):
    """The application-facing inference service."""

    def __init__(self, run: RunDir, workers: list[str], options: CoordinatorOptions, tls: TLSFiles, token: str | None):
        meta = run.read_meta()
        self.meta = meta
        self.options = options
        self.student = run.build_student(meta)
        # Only the heads' weights: the branches live on the devices.
        load_weights(self.student.heads, run.student_file, prefix="heads.")
        self.student.eval()
        self.policy = make_policy(options.policy)
        self.thresholds = thresholds_for(options.policy, self.student.num_exits, load_calibration(run))
        self.exit_macs = [int(m) for m in exit_costs(self.student, options.policy).tolist()]
        self.input_shape = (meta.data.in_channels, meta.data.image_size, meta.data.image_size)
        n = self.student.num_branches
        if len(workers) != n:
            raise ValueError(f"{run.path} has {n} branches but {len(workers)} worker addresses were given")
        self.links = [WorkerLink(a, i, tls, token, options) for i, a in enumerate(workers)]

    async def watch_workers(self) -> None:
        """Probe workers that are down, each on its back-off schedule."""
        while True:
            now = time.monotonic()
            await asyncio.gather(
                *(w.probe(self.student.num_exits) for w in self.links if not w.up and now >= w.next_try)
            )
            await asyncio.sleep(0.05)

    # -- the stage loop ------------------------------------------------------------------

    async def _gather(
        self, calls: dict[WorkerLink, asyncio.Future], k: int
    ) -> tuple[dict[WorkerLink, torch.Tensor], float]:
        """Wait for stage ``k`` from every call until the stage deadline; drop the rest.

        Returns the vectors that arrived and the slowest worker's own stage time (ms)."""
        done, pending = await asyncio.wait(calls.values(), timeout=self.options.stage_timeout_ms / 1000)
        for t in pending:
            t.cancel()
        got = {}
        worker_ms = 0.0
        for w, t in calls.items():
            if t not in done:
                w.failed(f"missed the stage {k} deadline")
                continue
            err = t.exception()
            if err is not None:
                if isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    log.error("worker rejected the token", extra={"device": w.branch})
                w.failed(str(err))
                continue
            reply = t.result()
            if reply is None or reply.stage != k:
                w.failed(f"stream ended before stage {k}")
                continue
            try:
                got[w] = from_proto(reply.pooled, f"branch {w.branch} vector", ("float32",))
                worker_ms = max(worker_ms, reply.compute_ms)
            except InvalidTensor as bad:
                w.failed(str(bad))
        return got, worker_ms

    async def infer_one(self, image: torch.Tensor, deadline_ms: float | None) -> pb.InferResult:
        """Run one input (uint8 (1, C, H, W)) through the stage loop."""
        t_start = time.perf_counter()
        rid = uuid.uuid4().hex
        active = started = [w for w in self.links if w.up]
        if not active:
            raise NoBranchError("no branch is available (all workers are down)")
        n, E = self.student.num_branches, self.student.num_exits
        first = pb.StageRequest(request_id=rid, stage=0, input=to_proto(image))
        streams: dict[WorkerLink, grpc.aio.UnaryStreamCall] = {}
        if self.options.mode == "eager":
            timeout = self.options.stage_timeout_ms / 1000 * E
            streams = {w: w.stub.RunAll(first, timeout=timeout, metadata=w.metadata) for w in active}
        logits, embeddings, stage_ms, worker_ms = [], [], [], []
        reason = "last-exit"
        try:
            for k in range(E):
                t0 = time.perf_counter()
                if streams:
                    calls = {w: asyncio.ensure_future(_next(streams[w])) for w in active}
                else:
                    req = first if k == 0 else pb.StageRequest(request_id=rid, stage=k)
                    calls = {w: w.run_stage(req, self.options.stage_timeout_ms / 1000) for w in active}
                got, slowest = await self._gather(calls, k)
                active = [w for w in active if w in got]
                if not got:
                    raise NoBranchError(f"no branch answered stage {k}")
                vectors: list[torch.Tensor | None] = [None] * n
                for w, v in got.items():
                    vectors[w.branch] = v
                # The heads are a few thousand MACs: cheaper inline than a thread hop.
                with torch.no_grad():
                    out = self.student.heads[k](vectors)
                logits.append(out.logits)
                embeddings.append(out.embedding)
                dt = (time.perf_counter() - t0) * 1000
                stage_ms.append(dt)
                worker_ms.append(slowest)
                metrics.COORD_STAGE_SECONDS.labels(str(k)).observe(dt / 1000)
                if k == E - 1:
                    break
                if bool(self.policy.should_exit(k, logits, embeddings, self.thresholds)):
                    reason = "policy"
                    break
                elapsed = (time.perf_counter() - t_start) * 1000
                if deadline_ms and should_stop_for_deadline(elapsed, max(stage_ms), deadline_ms):
                    reason = "deadline"
                    break
        finally:
            stopped_early = len(stage_ms) < E
            for call in streams.values():
                call.cancel()  # the worker drops the state when its stream is cancelled
            if not streams:
                # Workers that answered the last stage freed the state themselves.
                finished = [] if stopped_early else active
                self._drop_later(rid, [w for w in started if w not in finished])
        probs = torch.softmax(logits[-1].float(), dim=-1)[0]
        exit_index = len(logits) - 1
        metrics.EXITS.labels(str(exit_index)).inc()
        return pb.InferResult(
            prediction=int(probs.argmax()),
            probabilities=probs.tolist(),
            exit=exit_index,
            branches=sorted(w.branch for w in active),
            stage_ms=stage_ms,
            stop_reason=reason,
            worker_ms=worker_ms,
        )

    def _drop_later(self, rid: str, links: list[WorkerLink]) -> None:
        """Tell workers to drop a request, without making the answer wait for it (a dead
        worker holds nothing; a live one that misses the message expires the state)."""
        for w in links:
            w.drop(rid)

    # -- RPCs --------------------------------------------------------------------------

    async def Infer(self, request, context):  # noqa: N802 - gRPC method name
        """Answer a batch of inputs; each runs its own stage loop concurrently."""
        try:
            images = from_proto(request.images, "images", ("uint8",), (None, *self.input_shape), MAX_INPUTS * 4096 * 3)
        except InvalidTensor as err:
            metrics.REQUESTS.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if images.shape[0] > MAX_INPUTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_INPUTS} inputs per call")
        deadline = request.deadline_ms if request.deadline_ms > 0 else None
        if request.deadline_ms < 0 or not math.isfinite(request.deadline_ms):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "deadline_ms must be a finite number >= 0")
        t0 = time.perf_counter()
        try:
            results = await asyncio.gather(*(self.infer_one(images[i : i + 1], deadline) for i in range(len(images))))
        except NoBranchError as err:
            metrics.REQUESTS.labels("no-branch").inc(len(images))
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        metrics.REQUESTS.labels("ok").inc(len(images))
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - t0)
        return pb.InferReply(results=results)

    async def ModelInfo(self, request, context):  # noqa: N802
        """Shapes, classes, exits, policy and per-exit MACs of the served model."""
        return pb.ModelInfoReply(
            in_channels=self.meta.data.in_channels,
            image_size=self.meta.data.image_size,
            classes=self.meta.data.classes,
            num_exits=self.student.num_exits,
            num_branches=self.student.num_branches,
            policy=self.options.policy,
            mode=self.options.mode,
            exit_macs=self.exit_macs,
            full_macs=int(self.student.macs.full()),
        )


async def _next(call: grpc.aio.UnaryStreamCall):
    """The next message of a server stream, or None at its end."""
    msg = await call.read()
    return None if msg is grpc.aio.EOF else msg


async def serve_coordinator(
    run: RunDir,
    workers: list[str],
    listen: str,
    options: CoordinatorOptions,
    token: str | None = None,
    tls: TLSFiles = TLSFiles(),
    worker_tls: TLSFiles = TLSFiles(),
) -> None:
    """Serve until cancelled; SERVING once at least one worker is usable."""
    coord = Coordinator(run, workers, options, worker_tls, token)
    server, health_servicer, port = await start_server(
        lambda srv: pb_grpc.add_CoordinatorServicer_to_server(coord, srv), listen, token, tls
    )
    watcher = asyncio.ensure_future(coord.watch_workers())
    log.info("listening", extra={"address": listen, "port": port, "mode": options.mode, "policy": options.policy})
    try:
        while not any(w.up for w in coord.links):
            await asyncio.sleep(0.05)
        await set_health(health_servicer, SERVING)
        log.info("serving", extra={"workers_up": sum(w.up for w in coord.links)})
        await server.wait_for_termination()
    finally:
        watcher.cancel()
        await server.stop(grace=1)
