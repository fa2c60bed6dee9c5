import asyncio

from distree.runtime.batching import RowQueue


def test_takes_what_waits_within_the_row_budget_in_order():
    async def go():
        q: RowQueue[str] = RowQueue()
        for name, rows in (("a", 3), ("b", 4), ("c", 2), ("d", 9)):
            q.put(name, rows)
        first = await q.take(8)
        second = await q.take(8)
        third = await q.take(8)
        return first, second, third

    # a + b = 7 rows; c would make 9 > 8. d alone is over the budget: taken, alone.
    assert asyncio.run(go()) == (["a", "b"], ["c"], ["d"])


def test_waits_for_the_first_item_and_optionally_for_more():
    async def go():
        q: RowQueue[int] = RowQueue()
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, q.put, 1, 1)
        loop.call_later(0.04, q.put, 2, 1)
        alone = await q.take(8)  # no wait: takes what is there once the first arrives
        loop.call_later(0.01, q.put, 3, 1)
        loop.call_later(0.02, q.put, 4, 1)
        waited = await q.take(8, max_wait_s=0.2)
        return alone, waited

    alone, waited = asyncio.run(go())
    assert alone == [1]
    # 3 arrives first; the wait then collects 2 and 4.
    assert waited[0] == 3 and sorted(waited) == [2, 3, 4]
