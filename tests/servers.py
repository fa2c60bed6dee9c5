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
from collections.abc import Sequence
from pathlib import Path

import torch

from distree.launch.local import free_ports, wait_serving
from distree.run import RunDir
from distree.runtime.coordinator import CoordinatorOptions, serve_coordinator
from distree.runtime.security import TLSFiles
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
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="thread-cluster", daemon=True)
        self._thread.start()

    def _start(self, coro) -> None:
        async def schedule():
            self._tasks.append(asyncio.ensure_future(coro))

        asyncio.run_coroutine_threadsafe(schedule(), self._loop).result()

    def start_workers(self, n: int, options: WorkerOptions = WorkerOptions(), debug_rpcs: bool = False) -> list[str]:
        """Workers of branches 0..n-1; their addresses once each is healthy."""
        self.worker_addresses = [self.start_worker(b, options, debug_rpcs, wait=False) for b in range(n)]
        for address in self.worker_addresses:
            wait_serving(address)
        return self.worker_addresses

    def start_worker(
        self, branch: int, options: WorkerOptions = WorkerOptions(), debug_rpcs: bool = False, wait: bool = True
    ) -> str:
        """The worker of ``branch``; its address (once healthy, with ``wait``)."""
        (port,) = free_ports(1)
        address = f"127.0.0.1:{port}"
        stages = TorchStages(self.run, branch, torch.device("cpu"))
        self._start(serve_worker(stages, branch, address, options, self.token, TLSFiles(), None, debug_rpcs, GRACE_S))
        if wait:
            wait_serving(address)
        return address

    def start_coordinator(
        self,
        options: CoordinatorOptions = CoordinatorOptions(),
        workers: Sequence[str] | None = None,
        wait: bool = True,
        export: Path | None = None,
    ) -> str:
        """A coordinator over ``workers`` (default: this cluster's); its address once healthy.
        ``export``: the heads of this export run in onnxruntime instead of the run's in torch."""
        (port,) = free_ports(1)
        address = f"127.0.0.1:{port}"
        model = served_model(self.run.path) if export is None else served_model(export, "onnxruntime")
        ws = list(workers if workers is not None else self.worker_addresses)
        self._start(serve_coordinator(model, ws, address, options, self.token, TLSFiles(), TLSFiles(), GRACE_S))
        if wait:
            wait_serving(address)
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

    def __enter__(self) -> ThreadCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
