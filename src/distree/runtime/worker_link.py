"""The coordinator's connection to one worker: stage calls, drops, health and back-off.

Lockstep stages travel on one long-lived ``Session`` stream per worker: a message on an
open stream costs a fraction of a unary call (see ``bench/grpc_unary_vs_stream.py``).
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
from distree.runtime.security import TLSFiles, call_metadata, make_channel

log = logging.getLogger("distree.coordinator")

SESSION_ROTATE_S = 600.0  # a session takes new batches this long, then drains and ends
SESSION_DRAIN_S = 600.0  # ...within this much more time (the stream's gRPC deadline)


class SessionEnded(RuntimeError):
    """The stream to a worker ended before a batch was answered."""


@dataclass(frozen=True)
class LinkOptions:
    """Retry back-off of a worker that failed."""

    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0


class _Session:
    """One open Session stream: writes StageBatches, routes each reply to its waiters."""

    def __init__(self, stub: pb_grpc.WorkerStub, metadata, on_end):
        self.opened = time.monotonic()
        self._out: asyncio.Queue[pb.StageBatch | None] = asyncio.Queue()
        self._waiting: dict[int, list[asyncio.Future]] = {}
        self._seq = itertools.count(1)
        self._closing = False
        # The deadline bounds the stream's life; the link rotates to a new session well before.
        self._call = stub.Session(self._requests(), timeout=SESSION_ROTATE_S + SESSION_DRAIN_S, metadata=metadata)
        self._reader = asyncio.ensure_future(self._read(on_end))

    @property
    def usable(self) -> bool:
        """Takes new batches: open, and not yet due to rotate."""
        return not self._closing and time.monotonic() - self.opened < SESSION_ROTATE_S

    def send(self, batch: pb.StageBatch, waiters: list[asyncio.Future]) -> None:
        """Queue a batch; ``waiters`` (one per item) get the item's StageReply."""
        batch.seq = next(self._seq)
        self._waiting[batch.seq] = waiters
        self._out.put_nowait(batch)

    def close(self) -> None:
        """Take no more batches; the stream ends once the pending ones are answered, and
        the worker keeps what it started (the next session carries on with it)."""
        self._closing = True
        self._out.put_nowait(pb.StageBatch(handover=True, seq=next(self._seq)))
        if not self._waiting:
            self._out.put_nowait(None)

    async def _requests(self):
        while (batch := await self._out.get()) is not None:
            yield batch

    async def _read(self, on_end) -> None:
        err: Exception = SessionEnded("the worker ended the stream")
        try:
            async for reply in self._call:
                for f, item in zip(self._waiting.pop(reply.seq, []), reply.items):
                    if f.done():
                        continue  # the stage deadline passed; the coordinator moved on
                    if item.error:
                        f.set_exception(RuntimeError(item.error))
                    else:
                        f.set_result(item)
                if self._closing and not self._waiting:
                    self._out.put_nowait(None)
        except grpc.aio.AioRpcError as rpc_err:
            err = rpc_err
        except asyncio.CancelledError:
            err = SessionEnded("the session was cancelled")
            raise
        finally:
            for waiters in self._waiting.values():
                for f in waiters:
                    if not f.done():
                        f.set_exception(err)
            self._waiting.clear()
            self._closing = True
            on_end(self)


class WorkerLink:
    """One connection to one worker, with its health and retry back-off."""

    def __init__(self, address: str, position: int, tls: TLSFiles, token: str | None, opts: LinkOptions):
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
        self._session: _Session | None = None
        self._pending: list[tuple[pb.StageRequest, asyncio.Future]] = []
        self._drops: list[str] = []
        self._flush_scheduled = False

    def run_stage(self, request: pb.StageRequest) -> asyncio.Future:
        """Queue one request's stage for this worker; the future gets its StageReply."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        self._schedule_flush()
        return fut

    def drop(self, request_id: str) -> None:
        """Queue a request for the worker to forget (sent with the next batch)."""
        self._drops.append(request_id)
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
        self._session.send(pb.StageBatch(items=[r for r, _ in items], drop=drops), [f for _, f in items])

    def _session_ended(self, session: _Session) -> None:
        if self._session is session:
            self._session = None

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
