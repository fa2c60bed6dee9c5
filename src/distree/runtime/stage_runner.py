"""A worker's compute: one branch, its weights, and the per-stage batches it runs.

Requests waiting at the same stage are batched (bounded size and wait); small batches run
on the event loop, larger ones on one compute thread.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from distree.models import Branch
from distree.run import RunDir
from distree.runtime import metrics
from distree.runtime.batching import RowQueue
from distree.weights import load_weights

# Batches this small run on the event loop: their compute (about 0.2 ms an input here)
# costs less than handing them to the compute thread and back.
INLINE_ROWS = 4


class _StageBatcher:
    """Collects the requests waiting at one stage and runs their rows as one batch."""

    def __init__(self, run_batch, max_rows: int, max_wait_s: float):
        self._run_batch = run_batch
        self._max_rows = max_rows
        self._max_wait = max_wait_s
        self._queue: RowQueue[tuple[torch.Tensor, asyncio.Future]] = RowQueue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
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
                x = items[0][0] if len(items) == 1 else torch.cat([x for x, _ in items])
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
                parts = list(zip(hs.split(sizes), vs.split(sizes)))
            for (_, f), (h, v) in zip(items, parts):
                if not f.done():
                    f.set_result((h, v, compute_ms))

    def close(self) -> None:
        """Stop the batching loop."""
        self._task.cancel()


class StageRunner:
    """Runs the stages of one branch of a trained student, batched per stage."""

    def __init__(self, run: RunDir, branch: int, device: torch.device, max_batch: int, max_wait_ms: float):
        meta = run.meta
        n = len(meta.config.student.branches)
        if not 0 <= branch < n:
            raise ValueError(f"--branch must be in 0..{n - 1} for {run.path}, got {branch}")
        self.run_dir = run
        self.branch = branch
        self.label = str(branch)
        self.device = device
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.norm = meta.data.normalization
        self.input_shape = (meta.data.in_channels, meta.data.image_size, meta.data.image_size)
        self.model = Branch(
            meta.config.student.branches[branch], meta.config.student.exit_points, meta.data.in_channels
        )
        self.num_stages = self.model.num_stages
        self.stage_macs: list[int] = []  # per input, counted when the weights are loaded
        self.fingerprint = ""  # of the weights loaded
        self.stages_run = 0  # inputs times stages, since the start
        self.macs_run = 0
        # One compute thread for the larger batches: torch already uses every core inside
        # an op, and one thread keeps them from competing with each other.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage")
        self._batchers: list[_StageBatcher] = []

    def load(self) -> None:
        """Load this branch's weights (only its own) and run every stage once, so the
        first request does not pay for initialisation."""
        load_weights(self.model, self.run_dir.student_file, prefix=f"branches.{self.branch}.")
        self.fingerprint = self.run_dir.branch_fingerprint(self.branch)
        self.model.eval().to(self.device, memory_format=torch.channels_last)
        with torch.no_grad():
            h = self.norm(torch.zeros((1, *self.input_shape), dtype=torch.uint8, device=self.device))
            self.stage_macs = self.model.stage_macs(h.contiguous(memory_format=torch.channels_last))

    def start(self) -> None:
        """Create the per-stage batchers (inside the event loop)."""
        self._batchers = [
            _StageBatcher(lambda x, k=k: self._run(k, x), self.max_batch, self.max_wait_s)
            for k in range(self.num_stages)
        ]

    def stop(self) -> None:
        """Stop the batchers and the compute thread."""
        for b in self._batchers:
            b.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Stage ``k`` on ``x`` (rows, ...), batched with the other requests waiting at it:
        (feature map to keep, pooled vectors, the batch's compute ms)."""
        out = await self._batchers[k].submit(x)
        self.stages_run += x.shape[0]
        self.macs_run += x.shape[0] * self.stage_macs[k]
        metrics.STAGES_RUN.labels(self.label, str(k)).inc(x.shape[0])
        return out

    async def _run(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run stage ``k`` on ``x``: small batches here, larger ones on the compute thread."""
        if x.shape[0] <= INLINE_ROWS:
            return self._compute(k, x)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._compute, k, x)

    @torch.no_grad()
    def _compute(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        x = x.to(self.device)
        if k == 0:
            x = self.norm(x)
        h, v = self.model.run_stage(k, x.contiguous(memory_format=torch.channels_last))
        metrics.STAGE_SECONDS.labels(self.label, str(k)).observe(time.perf_counter() - t0)
        metrics.BATCH_SIZE.labels(self.label).observe(x.shape[0])
        return h, v.float().cpu()
