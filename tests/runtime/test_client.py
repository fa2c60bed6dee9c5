"""How the client reports a coordinator's failures: the status a caller can act on."""

import gc
import threading
import time
from concurrent import futures

import grpc
import pytest
import torch

from distree.runtime.client import DistreeClient, InferenceError
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc


class _Failing(pb_grpc.CoordinatorServicer):
    """Describes its model like any coordinator; fails every Infer with ``code``."""

    def __init__(self, code: grpc.StatusCode):
        self.code = code

    def ModelInfo(self, request, context):  # noqa: N802 - gRPC method name
        return pb.ModelInfoReply(in_channels=3, image_size=8, classes=["a", "b"], num_exits=2)

    def Infer(self, request, context):  # noqa: N802 - gRPC method name
        context.abort(self.code, "server side")


@pytest.fixture
def failing_coordinator():
    servers = []

    def start(code: grpc.StatusCode) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        pb_grpc.add_CoordinatorServicer_to_server(_Failing(code), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(grace=None)


def test_a_cancelled_status_from_the_coordinator_is_reported_as_unavailable(failing_coordinator):
    # gRPC core ends calls a shutting-down server never handled as CANCELLED; this client
    # never cancels, so the caller is told the coordinator went away and may send again.
    with DistreeClient(failing_coordinator(grpc.StatusCode.CANCELLED), timeout_s=10) as c:
        with pytest.raises(InferenceError, match="UNAVAILABLE: the coordinator shut down") as err:
            c.infer(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_other_statuses_are_reported_as_they_came(failing_coordinator):
    with DistreeClient(failing_coordinator(grpc.StatusCode.INVALID_ARGUMENT), timeout_s=10) as c:
        with pytest.raises(InferenceError, match="INVALID_ARGUMENT: server side") as err:
            c.infer(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


class _EndsEveryStream(_Failing):
    """Answers nothing on a stream: ends it at once, as a coordinator shutting down does."""

    def InferStream(self, request_iterator, context):  # noqa: N802 - gRPC method name
        return iter(())


class _HoldsEveryStream(_Failing):
    """Keeps a stream open, answering nothing, until the client goes away."""

    def InferStream(self, request_iterator, context):  # noqa: N802 - gRPC method name
        for _ in request_iterator:
            pass
        return iter(())


def _serve(servicer) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def ending_coordinator():
    server, address = _serve(_EndsEveryStream(grpc.StatusCode.INTERNAL))
    yield address
    server.stop(grace=None)


@pytest.fixture
def holding_coordinator():
    server, address = _serve(_HoldsEveryStream(grpc.StatusCode.INTERNAL))
    yield address
    server.stop(grace=None)


def _settles(count, timeout_s: float = 10.0) -> int:
    """``count()`` once it has stopped changing (threads take a moment to end)."""
    end, last = time.monotonic() + timeout_s, count()
    while time.monotonic() < end:
        time.sleep(0.2)
        now = count()
        if now == last:
            return now
        last = now
    return last


def test_streams_that_end_leave_no_thread_behind(ending_coordinator):
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    with DistreeClient(ending_coordinator, timeout_s=10) as c:
        c.model_info()
        with pytest.raises(InferenceError, match="UNAVAILABLE: the coordinator ended the stream"):
            c.infer(image)
        before = _settles(threading.active_count)
        for _ in range(10):  # each call opens a new stream, which the coordinator ends
            with pytest.raises(InferenceError, match="UNAVAILABLE"):
                c.infer(image)
        assert _settles(threading.active_count) <= before


def test_a_client_dropped_without_close_ends_its_stream(holding_coordinator):
    def streams() -> int:
        return sum(t.name == "distree-infer-stream" for t in threading.enumerate())

    c = DistreeClient(holding_coordinator, timeout_s=10)
    c._open_stream()
    assert _settles(streams) == 1
    del c
    gc.collect()
    assert _settles(streams) == 0
