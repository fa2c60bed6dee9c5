"""Authentication over a shared key, and TLS, for every distree server and client.

The key (``--token``, ``--token-file``, ``$DISTREE_TOKEN``) never travels. A client first
asks the server to prove that it holds the key (``ClientAuth``): it sends a random
challenge, and the server answers with a challenge of its own and an HMAC over both.
Only a server whose answer checks out gets the client's proof, an HMAC over the
server's challenge, sent with every call. So a peer that does not hold the key (a
process that took a dead worker's port, say) receives nothing, and a proof seen on the
wire is good only on the server that issued its challenge.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

AUTH_HEADER = "x-distree-auth"
CHALLENGE_METHOD = "/distree.Auth/Challenge"
# Health checks must work without the key (load balancers, orchestration probes), and the
# challenge is what a client calls before it may prove anything.
OPEN_METHODS = {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", CHALLENGE_METHOD}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
NONCE_BYTES = 16
#: How long a challenge a server issued stays good; a client then challenges again.
CHALLENGE_TTL_S = 3600.0
#: Challenges a server remembers at once (the oldest are forgotten first).
MAX_CHALLENGES = 4096


def _mac(key: bytes, role: bytes, *parts: bytes) -> bytes:
    # The role keeps a server's proof from ever serving as a client's, and the reverse.
    return hmac.new(key, b"|".join([b"distree-v1", role, *parts]), hashlib.sha256).digest()


class ServerAuth:
    """A server's side: answers challenges, and accepts the calls that prove the key
    over a challenge it issued."""

    def __init__(self, key: str):
        self._key = key.encode()
        self._issued: OrderedDict[bytes, float] = OrderedDict()  # server challenge -> when

    def answer(self, client_challenge: bytes) -> bytes:
        """Our challenge and our proof (HMAC over both challenges), for a client's challenge."""
        if len(client_challenge) != NONCE_BYTES:
            raise ValueError("a challenge is 16 bytes")
        mine = os.urandom(NONCE_BYTES)
        self._issued[mine] = time.monotonic()
        while len(self._issued) > MAX_CHALLENGES:
            self._issued.popitem(last=False)
        return mine + _mac(self._key, b"server", client_challenge, mine)

    def accepts(self, header: str | bytes) -> bool:
        """Whether ``header`` (``CHALLENGE:PROOF`` in hex) proves the key over one of our
        live challenges."""
        text = header.decode() if isinstance(header, bytes) else header
        try:
            challenge, proof = (bytes.fromhex(part) for part in text.split(":", 1))
        except ValueError:
            return False
        issued = self._issued.get(challenge)
        if issued is None or time.monotonic() - issued > CHALLENGE_TTL_S:
            return False
        return hmac.compare_digest(proof, _mac(self._key, b"client", challenge))


class ImpostorError(RuntimeError):
    """A server did not prove that it holds the shared key; nothing was sent to it."""


class ClientAuth:
    """A client's side, per server: the metadata that proves the key to that server, made
    once the server has proved it holds the key itself. ``None`` key: no metadata."""

    def __init__(self, key: str | None, address: str = "the server"):
        self._key = key.encode() if key else None
        self._address = address
        self._metadata: tuple[tuple[str, str], ...] | None = None if key else ()

    def forget(self) -> None:
        """Challenge the server again before the next call (it restarted, or refused us)."""
        if self._key is not None:
            self._metadata = None

    def _check(self, mine: bytes, reply: bytes) -> tuple[tuple[str, str], ...]:
        theirs, proof = reply[:NONCE_BYTES], reply[NONCE_BYTES:]
        if len(theirs) != NONCE_BYTES or not hmac.compare_digest(proof, _mac(self._key, b"server", mine, theirs)):
            raise ImpostorError(
                f"{self._address} did not prove that it holds the shared key (--token): nothing was sent to it; "
                "is it the process you meant, started with the same key?"
            )
        return ((AUTH_HEADER, f"{theirs.hex()}:{_mac(self._key, b'client', theirs).hex()}"),)

    def _open(self, error: grpc.RpcError) -> tuple[tuple[str, str], ...]:
        # A server started without a key asks for none: there is nothing to prove.
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            return ()
        raise error

    def metadata(self, channel: grpc.Channel, timeout_s: float = 5.0) -> tuple[tuple[str, str], ...]:
        """The metadata for a call on a blocking ``channel`` (challenging the server first if needed)."""
        if self._metadata is None:
            mine = os.urandom(NONCE_BYTES)
            try:
                reply = channel.unary_unary(CHALLENGE_METHOD)(mine, timeout=timeout_s)
                self._metadata = self._check(mine, reply)
            except grpc.RpcError as err:
                self._metadata = self._open(err)
        return self._metadata

    async def ametadata(self, channel: aio.Channel, timeout_s: float = 5.0) -> tuple[tuple[str, str], ...]:
        """``metadata`` on an asyncio ``channel``."""
        if self._metadata is None:
            mine = os.urandom(NONCE_BYTES)
            try:
                reply = await channel.unary_unary(CHALLENGE_METHOD)(mine, timeout=timeout_s)
                self._metadata = self._check(mine, reply)
            except aio.AioRpcError as err:
                self._metadata = self._open(err)
        return self._metadata


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


class AuthInterceptor(aio.ServerInterceptor):
    """Rejects with UNAUTHENTICATED every call that does not prove the key (``ServerAuth``)."""

    def __init__(self, auth: ServerAuth):
        self._auth = auth

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        if details.method in OPEN_METHODS:
            return await continuation(details)
        got = dict(details.invocation_metadata or ()).get(AUTH_HEADER, "")
        if got and self._auth.accepts(got):
            return await continuation(details)
        return _deny(await continuation(details))


def _deny(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    msg = "missing or wrong key (start the client with the shared --token)"
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


def message_options() -> list[tuple[str, int]]:
    """Send/receive size limits, the same on both ends."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


@dataclass(frozen=True)
class ServerLimits:
    """What one server lets its peers hold: connections at once (beyond it a new one is
    refused: a flood of silent connections cannot use up the process's files), and how
    long a connection may stay idle, or take to finish its handshake, before it is closed."""

    max_connections: int = 512  # half of systemd's default limit of 1,024 open files
    idle_timeout_s: float = 300.0
    handshake_timeout_s: float = 10.0

    def options(self) -> list[tuple[str, int]]:
        """The gRPC server arguments that enforce them."""
        return [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_connection_idle_ms", int(self.idle_timeout_s * 1000)),
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout_s * 1000)),
        ]


def make_server(token: str | None, limits: ServerLimits = ServerLimits()) -> aio.Server:
    """An asyncio gRPC server with size and connection limits and, with a key, its
    challenge and checks."""
    auth = ServerAuth(token) if token else None
    interceptors = [AuthInterceptor(auth)] if auth else []
    # Without SO_REUSEPORT a second server on a port in use fails to start, instead of
    # silently sharing the port (and the traffic) with the first.
    options = [*message_options(), *limits.options(), ("grpc.so_reuseport", 0)]
    server = aio.server(interceptors=interceptors, options=options)
    if auth is not None:

        async def challenge(request: bytes, context: aio.ServicerContext) -> bytes:
            try:
                return auth.answer(request)
            except ValueError as err:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))

        # Raw bytes both ways (no serializers): nothing in it needs a message type.
        handler = grpc.unary_unary_rpc_method_handler(challenge)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("distree.Auth", {"Challenge": handler}),))
    return server


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
