"""Shared-token authentication and TLS for every distree server and client."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

TOKEN_HEADER = "authorization"
# Health checks must work without the token (load balancers, orchestration probes).
OPEN_METHODS = {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: a server needs cert+key (and ca for mutual TLS); a client needs ca
    (and cert+key for mutual TLS)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def enabled(self) -> bool:
        """True when any TLS file is given."""
        return any((self.cert, self.key, self.ca))

    def _read(self, p: Path | None) -> bytes | None:
        return p.read_bytes() if p else None

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS server credentials; mutual TLS when a CA is given."""
        if not (self.cert and self.key):
            raise ValueError("a TLS server needs --tls-cert and --tls-key")
        return grpc.ssl_server_credentials(
            [(self._read(self.key), self._read(self.cert))],
            root_certificates=self._read(self.ca),
            require_client_auth=self.ca is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS client credentials (client certificate for mutual TLS when given)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca),
            private_key=self._read(self.key),
            certificate_chain=self._read(self.cert),
        )


class TokenInterceptor(aio.ServerInterceptor):
    """Rejects every call without the shared token with UNAUTHENTICATED."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        if details.method in OPEN_METHODS:
            return await continuation(details)
        got = dict(details.invocation_metadata or ()).get(TOKEN_HEADER, "")
        got_b = got.encode() if isinstance(got, str) else got
        if hmac.compare_digest(got_b, self._expected):
            return await continuation(details)
        return _deny(await continuation(details))


def _deny(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    msg = "missing or wrong token (pass the shared --token)"
    if handler is None:
        return None

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, msg)
        yield  # pragma: no cover - makes this an async generator

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Metadata that carries the token on a client call."""
    return ((TOKEN_HEADER, f"Bearer {token}"),) if token else ()


def message_options() -> list[tuple[str, int]]:
    """Send/receive size limits, the same on both ends."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def make_server(token: str | None) -> aio.Server:
    """An asyncio gRPC server with size limits and (optionally) token checking."""
    interceptors = [TokenInterceptor(token)] if token else []
    # Without SO_REUSEPORT a second server on a port in use fails to start, instead of
    # silently sharing the port (and the traffic) with the first.
    return aio.server(interceptors=interceptors, options=[*message_options(), ("grpc.so_reuseport", 0)])


def add_port(server: aio.Server, address: str, tls: TLSFiles) -> int:
    """Listen on ``address`` (TLS when configured); returns the bound port."""
    try:
        port = (
            server.add_secure_port(address, tls.server_credentials())
            if tls.enabled
            else server.add_insecure_port(address)
        )
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the port is in use or the address is not this machine's")
    return port


def channel_options(reconnect_s: tuple[float, float] = (0.2, 5.0)) -> list[tuple[str, int]]:
    """Size limits, and reconnecting after ``reconnect_s`` (first, most) seconds: gRPC's own
    default waits up to 120 s, so a restarted peer would stay unreached that long."""
    first, most = (int(s * 1000) for s in reconnect_s)
    return [
        *message_options(),
        ("grpc.initial_reconnect_backoff_ms", first),
        ("grpc.min_reconnect_backoff_ms", first),
        ("grpc.max_reconnect_backoff_ms", most),
    ]


def make_channel(address: str, tls: TLSFiles, reconnect_s: tuple[float, float] = (0.2, 5.0)) -> aio.Channel:
    """An asyncio channel with ``channel_options`` (TLS when configured)."""
    opts = channel_options(reconnect_s)
    if tls.enabled:
        return aio.secure_channel(address, tls.channel_credentials(), options=opts)
    return aio.insecure_channel(address, options=opts)


def make_blocking_channel(address: str, tls: TLSFiles) -> grpc.Channel:
    """``make_channel`` for blocking callers (the client, the cluster check and health checks)."""
    opts = channel_options()
    if tls.enabled:
        return grpc.secure_channel(address, tls.channel_credentials(), options=opts)
    return grpc.insecure_channel(address, options=opts)


TOKEN_ENV = "DISTREE_TOKEN"


def resolve_token(flag: str | None, file: Path | None) -> str | None:
    """The shared token from ``--token``, ``--token-file`` or ``$DISTREE_TOKEN`` (in that
    order); None for none. A file or the environment keeps it out of ``ps``."""
    import os

    if flag and file:
        raise ValueError("give the token with --token or --token-file, not both")
    if file is not None:
        try:
            token = file.read_text().strip()
        except OSError as err:
            raise ValueError(f"--token-file {file}: {err.strerror}") from None
        if not token:
            raise ValueError(f"--token-file {file} is empty")
        return token
    return flag or os.environ.get(TOKEN_ENV) or None
