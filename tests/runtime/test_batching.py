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
    # Arrivals are ordered by event-loop turns, not by timers: the test holds on a loaded machine.
    async def go():
        q: RowQueue[int] = RowQueue()
        loop = asyncio.get_running_loop()
        loop.call_soon(q.put, 1, 1)
        alone = await asyncio.wait_for(q.take(8), 10)  # no wait: returns with what is there

        async def arrive():
            q.put(3, 1)
            for item in (2, 4):
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                q.put(item, 1)

        feeder = loop.create_task(arrive())
        waited = await asyncio.wait_for(q.take(3, max_wait_s=10), 10)  # until 3 rows are in
        await feeder
        q.put(5, 1)
        timed_out = await asyncio.wait_for(q.take(8, max_wait_s=0.01), 10)  # gives up waiting for more
        return alone, waited, timed_out

    alone, waited, timed_out = asyncio.run(go())
    assert alone == [1]
    # 3 arrives first and is taken; the wait then collects 2 and 4 as they come.
    assert waited == [3, 2, 4]
    assert timed_out == [5]


def test_callers_take_turns_so_one_with_many_items_does_not_hold_back_others():
    async def go():
        q: RowQueue[str] = RowQueue()
        for i in range(4):
            q.put(f"big{i}", 8, key="big")  # one large call, split in four
        q.put("small", 1, key="small")  # then a single input
        assert q.first() == "big0"  # the longest waiting
        return [await q.take(8) for _ in range(4)]

    taken = asyncio.run(go())
    # The small call goes with the second group, not after all four of the large call's.
    assert taken[0] == ["big0"] and taken[1] == ["small"] and taken[2:] == [["big1"], ["big2"]]
