"""Greedy batching: whatever waits is taken together, up to a row budget.

Shared by the coordinator (Infer calls waiting to start become one group) and the
workers (groups waiting at the same stage become one forward pass). Nothing waits when
the queue is idle, so a lone request pays no batching delay; under load the batches grow.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class RowQueue(Generic[T]):
    """A queue of items that each carry some rows (inputs), in order within each key (one
    caller's items), taken round-robin across keys: a caller who queued many items does not
    keep one who queued a single item waiting behind all of them. With one key, a FIFO."""

    def __init__(self) -> None:
        self._by_key: OrderedDict[Hashable, deque[tuple[int, T, int]]] = OrderedDict()
        self._arrivals = itertools.count()
        self._wake = asyncio.Event()
        self.rows = 0  # inputs queued

    def put(self, item: T, rows: int, key: Hashable = None) -> None:
        """Queue ``item`` holding ``rows`` inputs, behind the other items of ``key``."""
        self._by_key.setdefault(key, deque()).append((next(self._arrivals), item, rows))
        self.rows += rows
        self._wake.set()

    def discard(self, key: Hashable) -> int:
        """Remove every item of ``key`` (its caller gave up); the rows removed."""
        q = self._by_key.pop(key, None)
        rows = sum(n for _, _, n in q) if q else 0
        self.rows -= rows
        return rows

    def first(self) -> T | None:
        """The item that has waited longest, or None."""
        heads = [q[0] for q in self._by_key.values()]
        return min(heads, key=lambda head: head[0])[1] if heads else None

    def _pop(self, key: Hashable) -> tuple[T, int]:
        q = self._by_key[key]
        _, item, rows = q.popleft()
        if q:
            self._by_key.move_to_end(key)  # its next item waits for every other key's turn
        else:
            del self._by_key[key]
        self.rows -= rows
        return item, rows

    def _fill(self, batch: list[T], rows: int, max_rows: int) -> int:
        """Add heads of the keys in turn while they fit in ``max_rows``; the rows taken in all."""
        took = True
        while took:
            took = False
            for key in list(self._by_key):
                q = self._by_key.get(key)
                if q and rows + q[0][2] <= max_rows:
                    item, n = self._pop(key)
                    batch.append(item)
                    rows += n
                    took = True
        return rows

    async def take(self, max_rows: int, max_wait_s: float = 0.0) -> list[T]:
        """Wait for at least one item, then take queued ones, the keys in turn, while their
        rows fit in ``max_rows`` (the first is taken whatever its size), waiting at most
        ``max_wait_s`` for more to arrive."""
        while not self._by_key:
            self._wake.clear()
            await self._wake.wait()
        item, rows = self._pop(next(iter(self._by_key)))
        batch = [item]
        deadline = time.monotonic() + max_wait_s
        while True:
            rows = self._fill(batch, rows, max_rows)
            timeout = deadline - time.monotonic()
            if rows >= max_rows or self._by_key or timeout <= 0:
                return batch
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:  # not TimeoutError before Python 3.11
                pass
