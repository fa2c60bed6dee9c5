"""What the coordinator takes on: a call nobody waits for stops costing the workers, and
calls beyond the queue's bound are refused at once. On gRPC servers in this process."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from conftest import RUNTIME_BRANCHES
from servers import ThreadCluster, settled_stages, stages_run

from distree.runtime.client import DistreeClient
from distree.runtime.coordinator import CoordinatorOptions
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.tensors import to_proto


def test_an_abandoned_call_stops_costing_the_workers_and_one_image_passes_at_once(trained):
    run, splits = trained
    images = np.repeat(splits.test.images.numpy(), 4096 // len(splits.test.images) + 1, axis=0)[:4096]
    with ThreadCluster(run.path) as cluster:
        workers = cluster.start_workers(RUNTIME_BRANCHES)
        # Small groups: the call is many groups, most of them still queued when it is abandoned.
        options = CoordinatorOptions(policy="full", max_group_inputs=16)
        coordinator = cluster.start_coordinator(options)
        with grpc.insecure_channel(coordinator) as ch:
            stub = pb_grpc.CoordinatorStub(ch)
            with pytest.raises(grpc.RpcError) as gave_up:
                stub.Infer(pb.InferRequest(images=to_proto(images)), timeout=0.3)
            assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            abandoned_at = time.monotonic()
            at_abandon = stages_run(workers)
            with DistreeClient(coordinator) as client:
                t0 = time.perf_counter()
                (answer,) = client.infer(images[:1])
                one_image_s = time.perf_counter() - t0
        ran, last_moved = settled_stages(workers)
    stages = len(run.meta.config.student.exit_points)
    # Once given up, the call costs at most what its groups in flight could still run (every
    # stage, to be generous), nothing of its queued groups (73,728 stages in all). How much
    # ran before it was given up depends on the machine's speed; this does not.
    in_flight = options.max_groups * options.max_group_inputs * stages * RUNTIME_BRANCHES
    assert ran - at_abandon <= in_flight + 1, (ran - at_abandon, in_flight)
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
