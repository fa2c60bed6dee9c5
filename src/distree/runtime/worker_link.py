"""The coordinator's connection to one worker: stage calls, drops, health and back-off.

Stages travel on one long-lived ``Session`` stream per worker, in both modes: a message
on an open stream costs a fraction of a call (see ``bench/runtime/grpc_unary_vs_stream.py``).
Under load, the stages (and drops) that many groups send in one turn of the event loop
go out as one message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distree.runtime import metrics
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import CHALLENGE_TTL_S, ClientAuth, ImpostorError, TLSFiles, make_channel

log = logging.getLogger("distree.coordinator")

SESSION_ROTATE_S = 600.0  # a session takes new batches this long, then drains and ends
SESSION_DRAIN_S = 600.0  # ...within this much more time (the stream's gRPC deadline)


class SessionEnded(RuntimeError):
    """The stream to a worker ended before a batch was answered."""


def _fingerprint_parts(fingerprint: str) -> tuple[str, str, str]:
    weights, _, rest = fingerprint.partition("-")
    inputs, _, precision = rest.partition("-")
    return weights, inputs, precision or "fp32"


def fingerprint_mismatch(branch: int, reported: str, expected: str) -> str:
    """Why a worker reporting ``reported`` cannot serve ``branch`` of a model whose branch
    fingerprint is ``expected`` (both ``WEIGHTS-INPUT[-PRECISION]``,
    ``RunDir.branch_fingerprint`` and ``run.with_precision``)."""
    got_weights, got_input, got_precision = _fingerprint_parts(reported)
    want_weights, want_input, want_precision = _fingerprint_parts(expected)
    if got_weights != want_weights:
        what = "other weights"
    elif got_input != want_input:
        what = "another input normalisation or image shape (data.mean, data.std in its run.json)"
    else:
        what = (
            f"the weights at another precision ({got_precision}; the coordinator's model is {want_precision}: "
            "serve the export the workers serve)"
        )
    return (
        f"worker serves branch {branch} with {what}: fingerprint {reported or 'none'}, the coordinator's model "
        f"has {expected}; is it another run directory?"
    )


class _Refused(RuntimeError):
    """A reachable worker that is not the one this link is for."""


@dataclass(frozen=True)
class LinkOptions:
    """Retry back-off of a worker that failed."""

    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0


_Key = tuple[str, int]  # (group id, stage): what a reply answers

CHECK_INTERVAL_S = 1.0  # health checks of a worker in use


class _Session:
    """One open Session stream: writes StageBatches, routes each reply to its waiter."""

    def __init__(self, stub: pb_grpc.WorkerStub, metadata, on_end):
        self.opened = time.monotonic()
        self._out: asyncio.Queue[pb.StageBatch | None] = asyncio.Queue()
        # A waiter leaves when answered or cancelled (a stage deadline, or an eager
        # group's later stages once it has exited).
        self._waiting: dict[_Key, asyncio.Future] = {}
        self._seq = itertools.count(1)
        self._closing = False
        self.broken = False  # ended while still in use (not by rotation): the peer failed or went away
        self._ended = False  # the end of the request stream is queued
        self.last_reply = 0.0  # monotonic time of the latest reply on this stream
        # The deadline bounds the stream's life; the link rotates to a new session well before.
        self._call = stub.Session(self._requests(), timeout=SESSION_ROTATE_S + SESSION_DRAIN_S, metadata=metadata)
        self._reader = asyncio.ensure_future(self._read(on_end))

    @property
    def usable(self) -> bool:
        """Takes new batches: open, and not yet due to rotate."""
        return not self._closing and time.monotonic() - self.opened < SESSION_ROTATE_S

    def send(self, batch: pb.StageBatch, waiters: dict[_Key, asyncio.Future]) -> None:
        """Queue a batch; each waiter gets the StageReply for its (group id, stage)."""
        batch.seq = next(self._seq)
        for key, f in waiters.items():
            self._waiting[key] = f
            f.add_done_callback(lambda f, key=key: self._forget(key, f))
        self._out.put_nowait(batch)

    def _forget(self, key: _Key, f: asyncio.Future) -> None:
        if self._waiting.get(key) is f:
            del self._waiting[key]
        self._end_if_drained()

    def _end_if_drained(self) -> None:
        if self._closing and not self._waiting and not self._ended:
            self._ended = True
            self._out.put_nowait(None)

    def close(self) -> None:
        """Take no more batches; the stream ends once the pending ones are answered, and
        the worker keeps what it started (the next session carries on with it)."""
        self._closing = True
        self._out.put_nowait(pb.StageBatch(handover=True, seq=next(self._seq)))
        self._end_if_drained()

    async def _requests(self):
        while (batch := await self._out.get()) is not None:
            yield batch

    async def _read(self, on_end) -> None:
        err: Exception = SessionEnded("the worker ended the stream")
        try:
            async for reply in self._call:
                self.last_reply = time.monotonic()
                for item in reply.items:
                    f = self._waiting.pop((item.group_id, item.stage), None)
                    if f is None or f.done():
                        continue  # the coordinator moved on (a deadline, or an exit)
                    if item.error:
                        f.set_exception(RuntimeError(item.error))
                    else:
                        f.set_result(item)
                self._end_if_drained()
        except grpc.aio.AioRpcError as rpc_err:
            err = rpc_err
        except asyncio.CancelledError:
            err = SessionEnded("the session was cancelled")
            raise
        finally:
            self.broken = not self._closing
            waiting, self._waiting = self._waiting, {}
            for f in waiting.values():
                if not f.done():
                    f.set_exception(err)
            self._closing = True
            on_end(self)


class WorkerLink:
    """One connection to one worker, with its health and retry back-off."""

    def __init__(
        self,
        address: str,
        position: int,
        tls: TLSFiles,
        token: str | None,
        opts: LinkOptions,
        fingerprint: str = "",
        instances: dict[str, WorkerLink] | None = None,
    ):
        self.address = address
        self.branch = position  # the worker must serve this branch (checked by Info)
        for family in (metrics.WORKER_FAILURES, metrics.STAGE_DEADLINE_MISSES):
            family.labels(str(position))  # each series exists from the start, at 0
        metrics.WORKER_UP.labels(str(position)).set(0)
        self.fingerprint = fingerprint  # ...with these weights (checked by Info when given)
        # The worker processes every link of one coordinator reaches, shared among them.
        self._instances: dict[str, WorkerLink] = {} if instances is None else instances
        self.channel = make_channel(address, tls, (opts.retry_initial_s, opts.retry_max_s))
        self.stub = pb_grpc.WorkerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self._auth = ClientAuth(token, f"the worker at {address}", expect=f"worker/{position}")
        self.metadata: tuple[tuple[str, str], ...] = ()  # proves the key to this worker, once it proved it
        self.up = False
        self._opts = opts
        self._backoff = opts.retry_initial_s
        self._waiting_why: str | None = None  # why the last connection attempt failed, as last logged
        self._plaintext = not tls.enabled
        self.next_try = 0.0
        self.next_check = 0.0
        self._session: _Session | None = None
        self._pending: list[tuple[pb.StageRequest, dict[_Key, asyncio.Future]]] = []
        self._drops: list[str] = []
        self._flush_scheduled = False

    def run_stage(self, request: pb.StageRequest) -> asyncio.Future:
        """Queue one group's stage for this worker; the future gets its StageReply."""
        return self._queue(request, 1)[0]

    def run_on(self, request: pb.StageRequest, num_stages: int) -> list[asyncio.Future]:
        """Eager: queue a group's stage and have the worker run every later one too (sets
        ``request.run_on``); one future per stage from ``request.stage``. Cancel those not
        needed, and drop the group to stop the worker."""
        request.run_on = True
        return self._queue(request, num_stages - request.stage)

    def _queue(self, request: pb.StageRequest, stages: int) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        waiters = {(request.group_id, request.stage + i): loop.create_future() for i in range(stages)}
        self._pending.append((request, waiters))
        self._schedule_flush()
        return list(waiters.values())

    def drop(self, group_id: str) -> None:
        """Queue a group for the worker to forget (sent with the next batch)."""
        self._drops.append(group_id)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        items, self._pending = self._pending, []
        drops, self._drops = self._drops, []
        if not items and not drops:
            return
        if self._session is None or not self._session.usable:
            if self._session is not None:
                self._session.close()
            self._session = _Session(self.stub, self.metadata, self._session_ended)
        waiters = {key: f for _, ws in items for key, f in ws.items()}
        self._session.send(pb.StageBatch(items=[r for r, _ in items], drop=drops), waiters)

    def _session_ended(self, session: _Session) -> None:
        if self._session is session:
            self._session = None
        if session.broken:
            # Whatever answers at this address next proves the key before it gets a proof
            # (the link reconnects, and challenges, once it is marked down).
            self.metadata = ()

    def answering(self, within_s: float) -> bool:
        """Whether the worker has answered anything in the last ``within_s`` seconds: a
        worker that misses a stage deadline while answering other stages is busy, not down."""
        session = self._session
        return session is not None and time.monotonic() - session.last_reply < within_s

    def failed(self, why: str) -> None:
        """Stop using the worker until a health check passes."""
        if self.up:
            log.warning("worker down", extra={"branch": self.branch, "address": self.address, "why": why})
        metrics.WORKER_FAILURES.labels(str(self.branch)).inc()
        metrics.WORKER_UP.labels(str(self.branch)).set(0)
        self.up = False
        self.next_try = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self._opts.retry_max_s)

    async def check(self) -> None:
        """Health-check a worker in use; one that does not say SERVING is down. A proof of
        the key half its life old is renewed, so that new sessions never carry a stale one."""
        self.next_check = time.monotonic() + CHECK_INTERVAL_S
        try:
            h = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            if self.metadata and time.monotonic() - self._auth.made_at > CHALLENGE_TTL_S / 2:
                self._auth.forget()
                self.metadata = await self._auth.ametadata(self.channel, timeout_s=1.0)
        except grpc.aio.AioRpcError as err:
            self.failed(f"health check failed: {err.code().name}")
            return
        except ImpostorError as err:
            log.error("worker refused", extra={"branch": self.branch, "address": self.address, "why": str(err)})
            self.failed(str(err))
            return
        if h.status != health_pb2.HealthCheckResponse.SERVING and self.up:
            self.failed("the worker says it is not serving (draining or loading)")

    async def try_connect(self, num_stages: int) -> None:
        """Health-check a worker that is down; use it again once it serves."""
        try:
            h = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            if h.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError("not serving yet")
            # A fresh challenge at every (re)connection: a restarted worker issues new ones,
            # and whatever holds the port now must prove the key before it gets a proof.
            self._auth.forget()
            self.metadata = await self._auth.ametadata(self.channel, timeout_s=1.0)
            info = await self.stub.Info(pb.InfoRequest(), timeout=1.0, metadata=self.metadata)
            owner = self._instances.get(info.instance) if info.instance else None
            if owner is not None and owner is not self:
                raise _Refused(
                    f"this is the worker process already used at {owner.address} (branch {owner.branch}): "
                    "one worker given twice, under two addresses?"
                )
            if info.num_stages != num_stages:
                raise _Refused(f"worker has {info.num_stages} stages, the model {num_stages}")
            if info.branch != self.branch:
                raise _Refused(
                    f"worker serves branch {info.branch}, but this address is given for branch {self.branch}"
                )
            if self.fingerprint and info.fingerprint != self.fingerprint:
                raise _Refused(fingerprint_mismatch(self.branch, info.fingerprint, self.fingerprint))
        except (_Refused, ImpostorError) as err:
            # A misconfigured cluster: said once per back-off, loudly, with the address.
            log.error("worker refused", extra={"branch": self.branch, "address": self.address, "why": str(err)})
            self.failed(str(err))
            return
        except (grpc.aio.AioRpcError, RuntimeError) as err:
            rpc = isinstance(err, grpc.aio.AioRpcError)
            why = f"{err.code().name}: {err.details()}" if rpc else str(err)
            if self._plaintext and "Socket closed" in why:  # what a TLS server does to plaintext
                why += " (does the worker expect TLS? see --worker-tls-ca)"
            where = {"branch": self.branch, "address": self.address}
            if rpc and err.code() == grpc.StatusCode.UNAUTHENTICATED:
                log.error("worker rejected the token", extra=where)
            elif why != self._waiting_why:
                # Once per reason, not per attempt: a worker not started yet, or one that speaks
                # TLS to a plaintext coordinator (or the reverse), is named with what gRPC said.
                log.warning("waiting for worker", extra={**where, "why": why})
            self._waiting_why = why
            self.failed(why)
            return
        if info.instance:
            self._instances[info.instance] = self
        self.up = True
        self._waiting_why = None
        self._backoff = self._opts.retry_initial_s
        metrics.WORKER_UP.labels(str(self.branch)).set(1)
        log.info("worker up", extra={"branch": self.branch, "address": self.address})
