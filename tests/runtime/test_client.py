"""How the client reports a coordinator's failures: the status a caller can act on."""

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
