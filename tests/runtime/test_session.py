"""The lockstep Session stream between the coordinator's link and a worker's gRPC server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from servers import ThreadCluster

from distree.runtime import worker_link
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import TLSFiles
from distree.runtime.tensors import to_proto


@pytest.fixture(scope="module")
def worker(trained):
    run, splits = trained
    with ThreadCluster(run.path) as cluster:
        yield cluster.start_workers(1, debug_rpcs=True)[0], splits.test.images[:3]


def _active(address: str) -> int:
    with grpc.insecure_channel(address) as ch:
        return pb_grpc.WorkerStub(ch).Info(pb.InfoRequest(), timeout=5).active_states


def _wait_active(address: str, want: int, timeout_s: float = 5.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := _active(address)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return n


def _raw_session(channel: grpc.aio.Channel):
    """A Session call fed from a queue (put None to half-close): (call, queue)."""
    q: asyncio.Queue = asyncio.Queue()

    async def requests():
        while (m := await q.get()) is not None:
            yield m

    return pb_grpc.WorkerStub(channel).Session(requests(), timeout=10), q


def test_rotating_sessions_keep_groups_and_rows(worker, monkeypatch):
    """Every batch on a fresh session (the old one ends cleanly): a group started on one
    session goes on through the next, with its rows narrowed by ``keep``."""
    address, images = worker
    monkeypatch.setattr(worker_link, "SESSION_ROTATE_S", 0.0)

    async def go():
        link = worker_link.WorkerLink(address, 0, TLSFiles(), None, worker_link.LinkOptions())
        try:
            first = await link.run_stage(pb.StageRequest(group_id="g", stage=0, input=to_proto(images)))
            second = await link.run_stage(pb.StageRequest(group_id="g", stage=1, keep=[0, 2]))
            with pytest.raises(RuntimeError, match="keep"):
                await link.run_stage(pb.StageRequest(group_id="g", stage=2, keep=[5]))
            link.drop("g")
            await asyncio.sleep(0.2)  # the drop rides on the next message
            return first, second
        finally:
            await link.channel.close()

    first, second = asyncio.run(go())
    assert list(first.pooled.shape)[0] == 3 and list(second.pooled.shape)[0] == 2
    assert _wait_active(address, 0) == 0


def test_broken_session_drops_its_groups_handover_does_not(worker):
    address, images = worker
    start = pb.StageBatch(items=[pb.StageRequest(group_id="a", stage=0, input=to_proto(images))], seq=1)

    async def one_session(cancel: bool) -> None:
        async with grpc.aio.insecure_channel(address) as ch:
            call, q = _raw_session(ch)
            q.put_nowait(start)
            reply = await call.read()
            assert reply.seq == 1 and not reply.items[0].error
            if cancel:
                call.cancel()  # as when the coordinator dies
            else:
                # The coordinator moves to a new session: handover, then half-close.
                q.put_nowait(pb.StageBatch(handover=True, seq=2))
                q.put_nowait(None)
                assert (await call.read()).seq == 2
                assert await call.read() is grpc.aio.EOF

    asyncio.run(one_session(cancel=True))
    assert _wait_active(address, 0) == 0
    asyncio.run(one_session(cancel=False))
    assert _wait_active(address, 1) == 1  # kept: its next stage may come on another session
    with grpc.insecure_channel(address) as ch:
        assert pb_grpc.WorkerDebugStub(ch).Drop(pb.DropRequest(group_id="a"), timeout=5).dropped


def test_a_stage_racing_itself_is_refused(worker):
    """Two requests for the same group's same stage at once: one runs, one is refused."""
    address, images = worker

    async def go():
        async with grpc.aio.insecure_channel(address) as ch:
            call, q = _raw_session(ch)
            q.put_nowait(pb.StageBatch(items=[pb.StageRequest(group_id="r", stage=0, input=to_proto(images))], seq=1))
            await call.read()
            # Both in one message: the worker starts them together, so they truly race
            # (two messages may arrive after the first stage already finished).
            twice = [pb.StageRequest(group_id="r", stage=1)] * 2
            q.put_nowait(pb.StageBatch(items=twice, seq=2))
            reply = await call.read()
            call.cancel()
            return [i.error for i in reply.items]

    first, second = asyncio.run(go())
    assert first == "" and "already running a stage" in second
    assert _wait_active(address, 0) == 0


def test_run_on_streams_every_stage_then_frees_the_group(worker):
    """Eager over the session: one message, then every stage's vectors as they are ready."""
    address, images = worker

    async def go():
        link = worker_link.WorkerLink(address, 0, TLSFiles(), None, worker_link.LinkOptions())
        try:
            info = await link.stub.Info(pb.InfoRequest(), timeout=5)
            futures = link.run_on(pb.StageRequest(group_id="e", stage=0, input=to_proto(images)), info.num_stages)
            return await asyncio.wait_for(asyncio.gather(*futures), 10)
        finally:
            await link.channel.close()

    replies = asyncio.run(go())
    assert [r.stage for r in replies] == list(range(len(replies))) and len(replies) > 1
    assert all(list(r.pooled.shape)[0] == len(images) for r in replies)
    assert _wait_active(address, 0) == 0  # the last stage frees the group


def test_eager_groups_on_one_session_answer_each_stage_once_in_order(worker):
    """Several eager groups started in one batch: however the worker packs their answers
    into replies, each (group, stage) comes exactly once, in stage order per group."""
    address, images = worker

    async def go():
        async with grpc.aio.insecure_channel(address) as ch:
            stages = (await pb_grpc.WorkerStub(ch).Info(pb.InfoRequest(), timeout=5)).num_stages
            call, q = _raw_session(ch)
            groups = ["m0", "m1", "m2"]
            items = [pb.StageRequest(group_id=g, stage=0, input=to_proto(images), run_on=True) for g in groups]
            q.put_nowait(pb.StageBatch(items=items, seq=1))
            got = []
            while len(got) < len(groups) * stages:
                got += [(i.group_id, i.stage, i.error) for i in (await call.read()).items]
            call.cancel()
            return groups, stages, got

    groups, stages, got = asyncio.run(go())
    assert all(not err for _, _, err in got)
    for g in groups:
        assert [k for gid, k, _ in got if gid == g] == list(range(stages))
    assert _wait_active(address, 0) == 0


def test_run_on_needs_a_session(worker):
    address, images = worker
    item = pb.StageRequest(group_id="u", stage=0, input=to_proto(images), run_on=True)
    with grpc.insecure_channel(address) as ch:
        reply = pb_grpc.WorkerDebugStub(ch).RunStages(pb.StageBatch(items=[item]), timeout=5)
    assert "run_on needs a Session" in reply.items[0].error
    assert _active(address) == 0
