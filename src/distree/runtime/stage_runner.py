"""A worker's compute: one branch's stages on some backend, and the per-stage batches.

Requests waiting at the same stage are batched (bounded size and wait); small batches run
on the event loop, larger ones on one compute thread. The backend (``StageBackend``) holds
the branch and runs one stage on a batch: torch on the run's weights
(``distree.runtime.torch_stages``) or onnxruntime on an export
(``distree.runtime.ort_stages``, no torch in the process).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from distree.runtime import metrics
from distree.runtime.batching import RowQueue

# Batches this small run on the event loop: their compute (about 0.2 ms an input here)
# costs less than handing them to the compute thread and back.
INLINE_ROWS = 4

#: A group's feature map between stages, in the backend's own type (a torch tensor, a
#: numpy array): it has ``.shape``, ``.nbytes`` and takes a numpy row index.
State = Any


class StageBackend(Protocol):
    """One branch, stage by stage, on one kind of compute."""

    num_stages: int
    input_shape: tuple[int, int, int]  # (C, H, W) of the uint8 images stage 0 takes
    stage_macs: list[int]  # per input, known once loaded
    fingerprint: str  # of the weights served (what Info reports)
    description: str  # what runs the stages, e.g. "torch cpu" (what Info reports)

    def load(self) -> None:
        """Load the weights and run every stage once."""

    def as_input(self, images: np.ndarray) -> State:
        """Stage 0's input from uint8 images (B, C, H, W)."""

    def compute(self, k: int, x: State) -> tuple[State, np.ndarray]:
        """Stage ``k`` on a batch: (state for stage k+1, pooled vectors (B, dim) float32)."""

    def cat(self, parts: list[State]) -> State:
        """Rows of several states as one batch."""

    def split(self, x: State, sizes: list[int]) -> list[State]:
        """A batch back into parts of ``sizes`` rows."""


class _StageBatcher:
    """Collects the requests waiting at one stage and runs their rows as one batch."""

    def __init__(self, run_batch, backend: StageBackend, max_rows: int, max_wait_s: float):
        self._run_batch = run_batch
        self._backend = backend
        self._max_rows = max_rows
        self._max_wait = max_wait_s
        self._queue: RowQueue[tuple[State, asyncio.Future]] = RowQueue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, x: State) -> tuple[State, np.ndarray, float]:
        """Run the stage on ``x`` (rows, ...) as part of some batch; returns (state, pooled,
        the batch's compute time in ms)."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.put((x, fut), x.shape[0])
        return await fut

    async def _loop(self) -> None:
        while True:
            items = await self._queue.take(self._max_rows, self._max_wait)
            items = [(x, f) for x, f in items if not f.cancelled()]
            if not items:
                continue
            try:
                x = items[0][0] if len(items) == 1 else self._backend.cat([x for x, _ in items])
                t0 = time.perf_counter()
                hs, vs = await self._run_batch(x)
                compute_ms = (time.perf_counter() - t0) * 1000
            except Exception as err:  # noqa: BLE001 - every waiter gets the error
                for _, f in items:
                    if not f.done():
                        f.set_exception(err)
                continue
            if len(items) == 1:
                parts = [(hs, vs)]
            else:
                sizes = [x.shape[0] for x, _ in items]
                cuts = np.cumsum(sizes)[:-1]
                parts = list(zip(self._backend.split(hs, sizes), np.split(vs, cuts)))
            for (_, f), (h, v) in zip(items, parts):
                if not f.done():
                    f.set_result((h, v, compute_ms))

    def close(self) -> None:
        """Stop the batching loop."""
        self._task.cancel()


class StageRunner:
    """Runs the stages of one branch on a backend, batched per stage."""

    def __init__(self, backend: StageBackend, branch: int, max_batch: int, max_wait_ms: float):
        self.backend = backend
        self.branch = branch
        self.label = str(branch)
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.num_stages = backend.num_stages
        self.input_shape = backend.input_shape
        self.stages_run = 0  # inputs times stages, since the start
        self.macs_run = 0
        # One compute thread for the larger batches: the backends already use every core
        # inside an op, and one thread keeps them from competing with each other.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage")
        self._batchers: list[_StageBatcher] = []

    @property
    def fingerprint(self) -> str:
        return self.backend.fingerprint

    def load(self) -> None:
        """Load the backend's weights and warm every stage up, so the first request does not
        pay for initialisation."""
        self.backend.load()

    def start(self) -> None:
        """Create the per-stage batchers (inside the event loop)."""
        self._batchers = [
            _StageBatcher(lambda x, k=k: self._run(k, x), self.backend, self.max_batch, self.max_wait_s)
            for k in range(self.num_stages)
        ]

    def stop(self) -> None:
        """Stop the batchers and the compute thread."""
        for b in self._batchers:
            b.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, k: int, x: State) -> tuple[State, np.ndarray, float]:
        """Stage ``k`` on ``x`` (rows, ...), batched with the other requests waiting at it:
        (feature map to keep, pooled vectors, the batch's compute ms)."""
        out = await self._batchers[k].submit(x)
        self.stages_run += x.shape[0]
        self.macs_run += x.shape[0] * self.backend.stage_macs[k]
        metrics.STAGES_RUN.labels(self.label, str(k)).inc(x.shape[0])
        return out

    async def _run(self, k: int, x: State) -> tuple[State, np.ndarray]:
        """Run stage ``k`` on ``x``: small batches here, larger ones on the compute thread."""
        if x.shape[0] <= INLINE_ROWS:
            return self._compute(k, x)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._compute, k, x)

    def _compute(self, k: int, x: State) -> tuple[State, np.ndarray]:
        t0 = time.perf_counter()
        h, v = self.backend.compute(k, x)
        metrics.STAGE_SECONDS.labels(self.label, str(k)).observe(time.perf_counter() - t0)
        metrics.BATCH_SIZE.labels(self.label).observe(x.shape[0])
        return h, v
