"""A Python client for the coordinator's inference service: grpcio and numpy only (it
also takes torch tensors, without importing torch)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from distree.answer import Answer
from distree.images import ImageLike, as_model_input
from distree.runtime.proto import distree_pb2 as pb
from distree.runtime.proto import distree_pb2_grpc as pb_grpc
from distree.runtime.security import ClientAuth, ImpostorError, TLSFiles, make_blocking_channel
from distree.runtime.tensors import to_proto


class InferenceError(RuntimeError):
    """The coordinator refused or failed a call; ``code`` is the gRPC status.

    ``UNAVAILABLE`` means the call can be sent again: the coordinator was unreachable or
    shutting down. This client never cancels a call itself, so a ``CANCELLED`` from gRPC is
    a coordinator that shut down before its handler took the call (gRPC core ends such
    calls as CANCELLED, grpc/grpc#41785); it is reported as ``UNAVAILABLE`` and the details
    say so.
    """

    def __init__(self, code: grpc.StatusCode, details: str):
        hint = " (check --token)" if code == grpc.StatusCode.UNAUTHENTICATED else ""
        super().__init__(f"{code.name}: {details}{hint}")
        self.code = code


class DistreeClient:
    """Blocking client: ``DistreeClient("host:port").infer(["frame.png"])``, images as they
    come (``distree.images``) or a uint8 numpy array or torch tensor of the model's shape."""

    def __init__(self, address: str, token: str | None = None, tls: TLSFiles = TLSFiles(), timeout_s: float = 60.0):
        self._channel = make_blocking_channel(address, tls)  # a restarted coordinator is reached within seconds
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._auth = ClientAuth(token, f"the coordinator at {address}", expect="coordinator")
        self.timeout_s = timeout_s
        self._info: pb.ModelInfoReply | None = None

    def _call(self, method, request):
        metadata: tuple[tuple[str, str], ...] = ()
        try:
            try:
                metadata = self._auth.metadata(self._channel, self.timeout_s)
                return method(request, timeout=self.timeout_s, metadata=metadata)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAUTHENTICATED or not metadata:
                    raise
                # A proof over a challenge the coordinator no longer knows (it restarted): the
                # call was refused before it ran, so it is sent again once, after a new challenge.
                self._auth.forget()
                metadata = self._auth.metadata(self._channel, self.timeout_s)
                return method(request, timeout=self.timeout_s, metadata=metadata)
        except ImpostorError as err:
            raise InferenceError(grpc.StatusCode.UNAUTHENTICATED, str(err)) from None
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            if code == grpc.StatusCode.CANCELLED:  # never by this client: see InferenceError
                code = grpc.StatusCode.UNAVAILABLE
                details = f"the coordinator shut down before taking the call ({details})"
            raise InferenceError(code, details) from None

    def model_info(self) -> pb.ModelInfoReply:
        """What the coordinator serves (asked once per client, then kept)."""
        if self._info is None:
            self._info = self._call(self._stub.ModelInfo, pb.ModelInfoRequest())
        return self._info

    #: Images per call when ``infer`` converts images (files, bytes, single arrays).
    CONVERTED_BATCH = 64

    def infer(
        self, images: ImageLike | Sequence[ImageLike], deadline_ms: float = 0.0, batch: int | None = None
    ) -> list[Answer]:
        """Classify images; one Answer per image, with its class name.

        A uint8 batch (B, C, H, W), numpy array or torch tensor, is sent as it is, in one call
        (or calls of ``batch``): the coordinator checks it against its model and refuses a
        wrong shape or dtype (``InferenceError``, INVALID_ARGUMENT). Anything else is taken
        as images as they come: file paths, bytes, PIL images or uint8 arrays of one image of
        any size ((H, W), (H, W, C), (C, H, W)), or a list of them, converted to the model's
        size and channels (``distree.images``) and sent in calls of ``batch`` (default 64)."""
        info = self.model_info()
        if hasattr(images, "shape") and len(images.shape) == 4:
            x, step = images, batch or max(1, len(images))
        else:
            x = as_model_input(images, (info.in_channels, info.image_size, info.image_size))
            step = batch or self.CONVERTED_BATCH
        return [a for i in range(0, len(x), step) for a in self._infer(x[i : i + step], deadline_ms, info.classes)]

    def _infer(self, images: np.ndarray, deadline_ms: float, classes: Sequence[str]) -> list[Answer]:
        reply = self._call(self._stub.Infer, pb.InferRequest(images=to_proto(images), deadline_ms=deadline_ms))
        return [
            Answer(
                prediction=r.prediction,
                probabilities=list(r.probabilities),
                exit=r.exit,
                macs=r.macs,
                class_name=classes[r.prediction],
                branches=list(r.branches),
                stop_reason=r.stop_reason,
                stage_ms=list(r.stage_ms),
                worker_ms=list(r.worker_ms),
                group_id=r.group_id,
            )
            for r in reply.results
        ]

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> DistreeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
