"""Workers and coordinators as gRPC servers inside the test process, for the tests where a
separate process adds nothing: the protocol, the stage loop over the network, grouping,
tokens. They are the same servers ``distree worker`` and ``distree serve`` run
(``serve_worker``, ``serve_coordinator``), on one event loop in a thread of this process,
so a cluster starts in a second instead of paying a torch import per process. Kills,
pauses, signals, ports and install roles stay with real processes (``LocalCluster``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distree.launch.local import free_port
from distree.run import RunDir
from distree.runtime.coordinator import CoordinatorOptions, serve_coordinator
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import ServerLimits, TLSFiles
from distree.runtime.served_model import served_model
from distree.runtime.torch_stages import TorchStages
from distree.runtime.worker import WorkerOptions, serve_worker

#: What a server gets to drain when the cluster stops: nothing is in flight by then.
GRACE_S = 0.2


class ThreadCluster:
    """Servers over ``run_dir`` on one event loop in a daemon thread; ``stop`` cancels them."""

    def __init__(self, run_dir: str | Path, token: str | None = None):
        self.run = RunDir(run_dir)
        self.token = token
        self.worker_addresses: list[str] = []
        self._tasks: list[asyncio.Future] = []
        self._ports: set[int] = set()  # handed out: servers bind later, the kernel may offer one again
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="thread-cluster", daemon=True)
        self._thread.start()

    def _address(self) -> str:
        return f"127.0.0.1:{free_port(self._ports)}"

    def _start(self, coro) -> asyncio.Future:
        async def schedule():
            task = asyncio.ensure_future(coro)
            self._tasks.append(task)
            return task

        return asyncio.run_coroutine_threadsafe(schedule(), self._loop).result()

    def _wait(self, address: str, task: asyncio.Future, serving: bool = True) -> None:
        """Until ``address`` answers a health check (SERVING, with ``serving``); a server
        that failed to start raises its own error instead of a timeout."""
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if task.done():
                    raise RuntimeError(f"the server at {address} stopped") from task.exception()
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if not serving or status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.05)
        raise TimeoutError(f"{address} did not answer within 60 s")

    def start_workers(self, n: int, options: WorkerOptions = WorkerOptions(), debug_rpcs: bool = False) -> list[str]:
        """Workers of branches 0..n-1; their addresses once each is healthy."""
        started = [self._worker(b, options, debug_rpcs) for b in range(n)]
        for address, task in started:
            self._wait(address, task)
        self.worker_addresses = [address for address, _ in started]
        return self.worker_addresses

    def start_worker(
        self,
        branch: int,
        options: WorkerOptions = WorkerOptions(),
        debug_rpcs: bool = False,
        limits: ServerLimits = ServerLimits(),
    ) -> str:
        """The worker of ``branch``; its address once healthy."""
        address, task = self._worker(branch, options, debug_rpcs, limits)
        self._wait(address, task)
        return address

    def _worker(
        self, branch: int, options: WorkerOptions, debug_rpcs: bool, limits: ServerLimits = ServerLimits()
    ) -> tuple[str, asyncio.Future]:
        address = self._address()
        stages = TorchStages(self.run, branch, torch.device("cpu"))
        coro = serve_worker(
            stages, branch, address, options, self.token, TLSFiles(), None, debug_rpcs, GRACE_S, limits=limits
        )
        return address, self._start(coro)

    def start_coordinator(
        self,
        options: CoordinatorOptions = CoordinatorOptions(),
        workers: Sequence[str] | None = None,
        wait: bool = True,
        export: Path | None = None,
    ) -> str:
        """A coordinator over ``workers`` (default: this cluster's); its address once healthy
        (with ``wait``; else once it answers at all). ``export``: the heads of this export
        run in onnxruntime instead of the run's in torch."""
        address = self._address()
        model = served_model(self.run.path) if export is None else served_model(export, "onnxruntime")
        ws = list(workers if workers is not None else self.worker_addresses)
        task = self._start(serve_coordinator(model, ws, address, options, self.token, TLSFiles(), TLSFiles(), GRACE_S))
        self._wait(address, task, serving=wait)
        return address

    def stop(self) -> None:
        async def cancel():
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            # What the servers leave behind (gRPC's request-stream consumers) goes with them.
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ThreadCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def stages_run(workers: list[str]) -> int:
    """Stages the workers at ``workers`` have run since they started (one per input and stage)."""
    total = 0
    for address in workers:
        with grpc.insecure_channel(address) as ch:
            total += pb_grpc.WorkerStub(ch).Info(pb.InfoRequest(), timeout=5).stages_run
    return total


def settled_stages(workers: list[str], quiet_s: float = 0.5, timeout_s: float = 10.0) -> tuple[int, float]:
    """The workers' stage count once it has not moved for ``quiet_s``, and when it last moved."""
    last, moved = stages_run(workers), time.monotonic()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        time.sleep(0.05)
        now = stages_run(workers)
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved >= quiet_s:
            return last, moved
    raise AssertionError(f"the workers were still running stages after {timeout_s} s")
