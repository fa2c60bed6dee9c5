"""Greedy batching: whatever waits is taken together, up to a row budget.

Shared by the coordinator (Infer calls waiting to start become one group) and the
workers (groups waiting at the same stage become one forward pass). Nothing waits when
the queue is idle, so a lone request pays no batching delay; under load the batches grow.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class RowQueue(Generic[T]):
    """A FIFO of items that each carry some rows (inputs)."""

    def __init__(self) -> None:
        self._items: deque[tuple[T, int]] = deque()
        self._wake = asyncio.Event()
        self.rows = 0  # inputs queued

    def put(self, item: T, rows: int) -> None:
        """Queue ``item`` holding ``rows`` inputs."""
        self._items.append((item, rows))
        self.rows += rows
        self._wake.set()

    def first(self) -> T | None:
        """The item that has waited longest, or None."""
        return self._items[0][0] if self._items else None

    async def take(self, max_rows: int, max_wait_s: float = 0.0) -> list[T]:
        """Wait for at least one item, then take the queued ones in order while their rows
        fit in ``max_rows`` (the first is taken whatever its size), waiting at most
        ``max_wait_s`` for more to arrive."""
        while not self._items:
            self._wake.clear()
            await self._wake.wait()
        item, rows = self._items.popleft()
        self.rows -= rows
        batch = [item]
        deadline = time.monotonic() + max_wait_s
        while True:
            while self._items and rows + self._items[0][1] <= max_rows:
                item, n = self._items.popleft()
                self.rows -= n
                batch.append(item)
                rows += n
            timeout = deadline - time.monotonic()
            if rows >= max_rows or self._items or timeout <= 0:
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:  # not TimeoutError before Python 3.11
                pass
