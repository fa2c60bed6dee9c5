"""What the coordinator takes on: a call nobody waits for stops costing the workers, and
calls beyond the queue's bound are refused at once. On gRPC servers in this process."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from conftest import RUNTIME_BRANCHES
from servers import ThreadCluster

from distree.runtime.client import DistreeClient
from distree.runtime.coordinator import CoordinatorOptions
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.tensors import to_proto


def _stages_run(workers: list[str]) -> int:
    total = 0
    for address in workers:
        with grpc.insecure_channel(address) as ch:
            total += pb_grpc.WorkerStub(ch).Info(pb.InfoRequest(), timeout=5).stages_run
    return total


def _settled(workers: list[str], quiet_s: float = 0.5, timeout_s: float = 10.0) -> tuple[int, float]:
    """The workers' stage count once it has not moved for ``quiet_s``, and when it last moved."""
    last, moved = _stages_run(workers), time.monotonic()
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        time.sleep(0.05)
        now = _stages_run(workers)
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved >= quiet_s:
            return last, moved
    raise AssertionError(f"the workers were still running stages after {timeout_s} s")


def test_an_abandoned_call_stops_costing_the_workers_and_one_image_passes_at_once(trained):
    run, splits = trained
    images = np.repeat(splits.test.images.numpy(), 4096 // len(splits.test.images) + 1, axis=0)[:4096]
    with ThreadCluster(run.path) as cluster:
        workers = cluster.start_workers(RUNTIME_BRANCHES)
        # Small groups: the call is many groups, most of them still queued when it is abandoned.
        coordinator = cluster.start_coordinator(CoordinatorOptions(policy="full", max_group_inputs=16))
        before = _stages_run(workers)
        with grpc.insecure_channel(coordinator) as ch:
            stub = pb_grpc.CoordinatorStub(ch)
            with pytest.raises(grpc.RpcError) as gave_up:
                stub.Infer(pb.InferRequest(images=to_proto(images)), timeout=0.3)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            abandoned_at = time.monotonic()
            with DistreeClient(coordinator) as client:
                t0 = time.perf_counter()
                (answer,) = client.infer(images[:1])
                one_image_s = time.perf_counter() - t0
        ran, last_moved = _settled(workers)
    stages = len(run.meta.config.student.exit_points)
    full = 4096 * stages * RUNTIME_BRANCHES  # what the call would have cost: every input, stage and branch
    assert ran - before < full / 4, (ran - before, full)
    assert last_moved - abandoned_at < 1.0
    assert one_image_s < 1.0 and answer.exit == stages - 1


def test_calls_beyond_the_queue_bound_are_refused_at_once(trained):
    run, splits = trained
    images = np.repeat(splits.test.images.numpy(), 4096 // len(splits.test.images) + 1, axis=0)[:4096]
    with ThreadCluster(run.path) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES)
        options = CoordinatorOptions(max_queued_inputs=50, max_group_inputs=16, policy="full")
        coordinator = cluster.start_coordinator(options)
        with grpc.insecure_channel(coordinator) as ch:
            stub = pb_grpc.CoordinatorStub(ch)
            # An idle queue takes a call larger than the bound, in groups...
            large = stub.Infer.future(pb.InferRequest(images=to_proto(images)), timeout=60)
            # ...and while its groups wait, a call that would pass the bound is refused at once.
            refused = None
            while refused is None and not large.done():
                try:
                    stub.Infer(pb.InferRequest(images=to_proto(images[:8])), timeout=10)
                except grpc.RpcError as err:
                    refused = err
            assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 50" in refused.details()
            assert len(large.result().results) == 4096
            reply = stub.Infer(pb.InferRequest(images=to_proto(images[:8])), timeout=10)
            assert len(reply.results) == 8
