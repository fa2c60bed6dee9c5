"""Calls on one InferStream: answered as calls of their own are, each with its own status,
and a call given up on stops costing the workers. On gRPC servers in this process."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from conftest import RUNTIME_BRANCHES
from servers import ThreadCluster, settled_stages, stages_run

from distree.runtime.client import DistreeClient, InferenceError
from distree.runtime.coordinator import CoordinatorOptions
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.tensors import to_proto


def _request(images: np.ndarray) -> pb.InferRequest:
    return pb.InferRequest(images=to_proto(images))


@pytest.fixture(scope="module")
def cluster(trained):
    run, splits = trained
    with ThreadCluster(run.path) as c:
        workers = c.start_workers(RUNTIME_BRANCHES)
        yield c.start_coordinator(CoordinatorOptions(policy="full")), workers, splits.test.images.numpy()


def test_calls_from_many_threads_share_one_stream_and_answer_as_calls_of_their_own(cluster):
    coordinator, _, images = cluster
    with grpc.insecure_channel(coordinator) as ch:
        stub = pb_grpc.CoordinatorStub(ch)
        expected = [stub.Infer(_request(images[i : i + 1]), timeout=30).results[0].prediction for i in range(24)]
    got: dict[int, int] = {}
    with DistreeClient(coordinator, timeout_s=30) as client:

        def send(i: int) -> None:
            got[i] = client.infer(images[i : i + 1])[0].prediction

        threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert client._stream is not None and client._stream.ended is None  # one stream, still open
    assert [got[i] for i in range(24)] == expected


def test_each_call_on_a_stream_gets_its_own_status(cluster):
    coordinator, _, images = cluster
    wrong_shape = np.zeros((1, 3, 5, 5), dtype=np.uint8)
    messages = [
        pb.InferStreamRequest(id=1, request=_request(wrong_shape)),
        pb.InferStreamRequest(id=2, request=pb.InferRequest(images=to_proto(images[:2]), deadline_ms=-1)),
        pb.InferStreamRequest(id=3, request=_request(images[:2])),
    ]
    with grpc.insecure_channel(coordinator) as ch:
        replies = {r.id: r for r in pb_grpc.CoordinatorStub(ch).InferStream(iter(messages), timeout=30)}
    assert set(replies) == {1, 2, 3}  # the client ended its side: every call taken was answered first
    assert replies[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "does not match" in replies[1].details
    assert replies[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "deadline_ms" in replies[2].details
    assert replies[3].code == 0 and len(replies[3].reply.results) == 2


def test_a_call_given_up_on_a_stream_stops_costing_the_workers(trained):
    run, splits = trained
    images = np.resize(splits.test.images.numpy(), (4096, *splits.test.images.shape[1:]))
    with ThreadCluster(run.path) as c:
        workers = c.start_workers(RUNTIME_BRANCHES)
        # Small groups: the call is many groups, most of them still queued when it is given up.
        options = CoordinatorOptions(policy="full", max_group_inputs=16)
        coordinator = c.start_coordinator(options)
        sent = threading.Event()
        cancel = threading.Event()

        def messages():
            yield pb.InferStreamRequest(id=7, request=_request(images))
            sent.set()
            cancel.wait(30)
            yield pb.InferStreamRequest(id=7, cancel=True)

        with grpc.insecure_channel(coordinator) as ch:
            replies = pb_grpc.CoordinatorStub(ch).InferStream(messages(), timeout=60)
            sent.wait(30)
            cancel.set()
            (reply,) = list(replies)
            at_cancel = stages_run(workers)
        ran, _ = settled_stages(workers)
    assert reply.id == 7 and reply.code == grpc.StatusCode.CANCELLED.value[0]
    # Once cancelled, at most what its groups in flight could still run (test_admission.py).
    in_flight = options.max_groups * options.max_group_inputs * len(run.meta.config.student.exit_points)
    assert ran - at_cancel <= in_flight * RUNTIME_BRANCHES + 1


def test_a_client_that_times_out_on_the_stream_can_call_again(cluster):
    coordinator, _, images = cluster
    many = np.resize(images, (64, *images.shape[1:]))
    with DistreeClient(coordinator, timeout_s=30) as client:
        client.model_info()  # asked once, then kept
        client.timeout_s = 0.001
        with pytest.raises(InferenceError, match="DEADLINE_EXCEEDED: no answer within") as err:
            client.infer(many)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        client.timeout_s = 30
        assert len(client.infer(images[:3])) == 3  # the same stream: the call given up left nothing behind


def test_an_id_in_flight_twice_is_refused_and_the_first_call_still_answered(cluster):
    coordinator, _, images = cluster
    many = np.resize(images, (512, *images.shape[1:]))
    messages = [
        pb.InferStreamRequest(id=5, request=_request(many)),
        pb.InferStreamRequest(id=5, request=_request(many)),
    ]
    with grpc.insecure_channel(coordinator) as ch:
        replies = list(pb_grpc.CoordinatorStub(ch).InferStream(iter(messages), timeout=60))
    assert [r.code for r in replies] == [grpc.StatusCode.INVALID_ARGUMENT.value[0], 0]
    assert "already in flight" in replies[0].details and len(replies[1].reply.results) == 512


def test_a_message_that_cannot_be_read_ends_the_stream_with_the_reason_after_the_calls_taken(cluster):
    coordinator, _, images = cluster
    good = pb.InferStreamRequest(id=1, request=_request(images[:2])).SerializeToString()
    with grpc.insecure_channel(coordinator) as ch:
        raw = ch.stream_stream("/distree.v1.Coordinator/InferStream")  # bytes both ways
        replies = raw(iter([good, b"\xff\xff\xff"]), timeout=30)
        first = pb.InferStreamReply.FromString(next(replies))
        with pytest.raises(grpc.RpcError) as ended:
            next(replies)
    assert first.id == 1 and first.code == 0 and len(first.reply.results) == 2
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a message on the stream" in ended.value.details()
