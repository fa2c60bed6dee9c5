"""A Python client for the coordinator's inference service: grpcio and numpy only (it
also takes torch tensors, without importing torch)."""

from __future__ import annotations

import itertools
import queue
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

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


def _status(code: grpc.StatusCode, details: str) -> tuple[grpc.StatusCode, str]:
    """The status a caller is told of for a call ended with ``code``."""
    if code == grpc.StatusCode.CANCELLED:  # never by this client: see InferenceError
        return grpc.StatusCode.UNAVAILABLE, f"the coordinator shut down before taking the call ({details})"
    return code, details


def _error(code: grpc.StatusCode, details: str) -> InferenceError:
    """The error a caller gets for a call ended with ``code``."""
    return InferenceError(*_status(code, details))


_STATUS = {c.value[0]: c for c in grpc.StatusCode}


class _InferStream:
    """One open ``InferStream`` call that the client's threads share: each call a message
    with its id, its answer routed back by a reader thread."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, metadata: tuple[tuple[str, str], ...]):
        self.metadata = metadata
        self._requests: queue.SimpleQueue[pb.InferStreamRequest | None] = queue.SimpleQueue()
        self._waiting: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False  # closed by this client
        self.ended: tuple[grpc.StatusCode, str] | None = None  # why the stream ended; then it takes no calls
        self._call = stub.InferStream(iter(self._requests.get, None), metadata=metadata)
        threading.Thread(target=self._read, name="distree-infer-stream", daemon=True).start()

    def send(self, request: pb.InferRequest) -> tuple[int, Future]:
        """Send a call; its future gets the InferReply or an InferenceError."""
        answer: Future = Future()
        with self._lock:
            if self.ended is not None:
                raise InferenceError(*self.ended)
            call_id = next(self._ids)
            self._waiting[call_id] = answer
            self._requests.put(pb.InferStreamRequest(id=call_id, request=request))
        return call_id, answer

    def cancel(self, call_id: int) -> None:
        """Give up on a call: the coordinator stops running it."""
        with self._lock:
            if self._waiting.pop(call_id, None) is not None and self.ended is None:
                self._requests.put(pb.InferStreamRequest(id=call_id, cancel=True))

    def _read(self) -> None:
        try:
            for reply in self._call:
                with self._lock:
                    answer = self._waiting.pop(reply.id, None)
                if answer is None:
                    continue  # given up on
                if reply.code:
                    answer.set_exception(_error(_STATUS.get(reply.code, grpc.StatusCode.UNKNOWN), reply.details))
                else:
                    answer.set_result(reply.reply)
            ended = (
                grpc.StatusCode.UNAVAILABLE,
                "the coordinator ended the stream before taking the call (shutting down?)",
            )
        except grpc.RpcError as err:
            if self._closed and err.code() == grpc.StatusCode.CANCELLED:
                ended = (grpc.StatusCode.CANCELLED, "the client was closed while the call waited")
            else:
                ended = _status(err.code(), err.details())
        with self._lock:
            self.ended = ended
            waiting, self._waiting = self._waiting, {}
            self._requests.put(None)  # ends gRPC's thread that sends the requests
        for answer in waiting.values():
            answer.set_exception(InferenceError(*ended))

    def close(self) -> None:
        """End the stream: calls still waiting get CANCELLED."""
        self._closed = True
        self._requests.put(None)
        self._call.cancel()


class DistreeClient:
    """Blocking client: ``DistreeClient("host:port").infer(["frame.png"])``, images as they
    come (``distree.images``) or a uint8 numpy array or torch tensor of the model's shape."""

    #: Calls of at most this many inputs ride the client's one open stream, where a call
    #: costs the coordinator about half as much; larger ones go as calls of their own, so
    #: that their upload does not hold the small calls back.
    STREAM_MAX_INPUTS = 64

    def __init__(self, address: str, token: str | None = None, tls: TLSFiles = TLSFiles(), timeout_s: float = 60.0):
        self._channel = make_blocking_channel(address, tls)  # a restarted coordinator is reached within seconds
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._auth = ClientAuth(token, f"the coordinator at {address}", expect="coordinator")
        self.timeout_s = timeout_s
        self._info: pb.ModelInfoReply | None = None
        self._stream: _InferStream | None = None
        self._stream_lock = threading.Lock()
        self._streams = True  # False once the coordinator said it has no InferStream
        # A client dropped without close() must not hold its stream (and a connection of
        # the coordinator's) open: closing the channel ends the stream and its threads.
        self._finalizer = weakref.finalize(self, self._channel.close)

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
            raise _error(err.code(), err.details()) from None

    def _open_stream(self) -> _InferStream:
        with self._stream_lock:
            if self._stream is None or self._stream.ended is not None:
                try:
                    metadata = self._auth.metadata(self._channel, self.timeout_s)
                except ImpostorError as err:
                    raise InferenceError(grpc.StatusCode.UNAUTHENTICATED, str(err)) from None
                except grpc.RpcError as err:
                    raise _error(err.code(), err.details()) from None
                self._stream = _InferStream(self._stub, metadata)
            return self._stream

    def _call_on_stream(self, request: pb.InferRequest) -> pb.InferReply:
        """A call on the open stream (opened, or opened again, as needed)."""
        for attempt in range(2):
            stream = self._open_stream()
            call_id = None
            try:
                call_id, answer = stream.send(request)
                return answer.result(timeout=self.timeout_s)
            except FutureTimeout:
                stream.cancel(call_id)
                raise InferenceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {self.timeout_s} s"
                ) from None
            except InferenceError as err:
                if err.code == grpc.StatusCode.UNIMPLEMENTED:  # a coordinator without streams
                    self._streams = False
                    return self._call(self._stub.Infer, request)
                if err.code == grpc.StatusCode.UNAUTHENTICATED and stream.metadata and not attempt:
                    # Refused before anything ran: a proof over a challenge the coordinator
                    # no longer knows (it restarted). Once more, after a new challenge.
                    self._auth.forget()
                    continue
                raise err from None
        raise AssertionError("unreachable")

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
        request = pb.InferRequest(images=to_proto(images), deadline_ms=deadline_ms)
        if self._streams and len(images) <= self.STREAM_MAX_INPUTS:
            reply = self._call_on_stream(request)
        else:
            reply = self._call(self._stub.Infer, request)
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
                start=r.start,
            )
            for r in reply.results
        ]

    def close(self) -> None:
        """Close the stream and the channel."""
        if self._stream is not None:
            self._stream.close()
        self._finalizer()

    def __enter__(self) -> DistreeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
