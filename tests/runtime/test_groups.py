"""The coordinator's group bookkeeping, without processes: when waiting calls start a
group, and each call answered as soon as its own rows have exited."""

import asyncio
import math

import pytest
import torch

from distree.runtime.coordinator import NoBranchError, _Call, _CallAnswers, fill_wait_s
from distree.runtime.proto import distree_pb2 as pb


@pytest.mark.parametrize(
    ("oldest", "rows", "now", "want"),
    [
        (None, 0, 5.0, None),  # nothing waits: wait for an arrival
        (5.0, 32, 5.0, 0.0),  # enough inputs: start at once
        (5.0, 3, 5.0, 0.05),  # few: wait up to the bound for more
        (5.0, 3, 5.03, 0.02),
        (5.0, 3, 5.05, 0.0),  # the oldest has waited the bound: start
        (5.0, 3, 9.0, 0.0),
    ],
)
def test_waiting_calls_start_when_enough_or_the_oldest_waited_long_enough(oldest, rows, now, want):
    got = fill_wait_s(oldest, rows, min_rows=32, max_wait_s=0.05, now=now)
    assert got == want if want is None else math.isclose(got, want, abs_tol=1e-9)


def _result(row: int) -> pb.InferResult:
    return pb.InferResult(prediction=row, exit=0)


def test_a_call_is_answered_once_its_rows_exit_not_when_the_group_ends():
    async def scenario():
        loop = asyncio.get_running_loop()
        calls = [_Call(torch.zeros(n, 1, 1, 1), 0.0, math.inf, loop.create_future()) for n in (2, 1, 1)]
        answers = _CallAnswers(calls)
        assert answers.owner == [0, 0, 1, 2]
        answers.answer([2], [_result(2)])  # the second call's only input left at exit 0
        assert calls[1].future.done() and not calls[0].future.done()
        assert [r.prediction for r in calls[1].future.result()] == [2]
        answers.answer([1], [_result(1)])  # half of the first call: not yet
        assert not calls[0].future.done()
        answers.answer([0], [_result(0)])
        assert [r.prediction for r in calls[0].future.result()] == [0, 1]  # in input order
        answers.fail(NoBranchError("no branch answered stage 3"))  # the group failed later
        assert calls[0].future.exception() is None and calls[1].future.exception() is None
        with pytest.raises(NoBranchError):
            calls[2].future.result()  # only the call still running gets the error

    asyncio.run(scenario())
