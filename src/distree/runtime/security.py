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
#: How long a server's challenge stays good; a client then challenges again.
CHALLENGE_TTL_S = 3600.0


def _mac(key: bytes, role: bytes, *parts: bytes) -> bytes:
    # The role keeps a server's proof from ever serving as a client's, and the reverse.
    return hmac.new(key, b"|".join([b"distree-v1", role, *parts]), hashlib.sha256).digest()


class ServerAuth:
    """A server's side: answers challenges, and accepts the calls that prove the key over
    one of its challenges and its identity.

    ``identity`` is what the server is to its clients and which process it is
    (``worker/2#<instance>``, ``coordinator#<instance>``): both proofs name it, so a peer
    that relays a real server's answer to a client expecting another role is refused, and
    a client's proof is good on this process only, not on a restarted one or a replica. A challenge carries its own time and an HMAC of it: the server keeps no list
    that callers could fill or flush.
    """

    def __init__(self, key: str, identity: str):
        self._key = key.encode()
        self.identity = identity

    def _challenge(self, issued: int, salt: bytes) -> bytes:
        stamp = issued.to_bytes(8, "big") + salt
        return stamp + _mac(self._key, b"challenge", stamp)[:NONCE_BYTES]

    def answer(self, client_challenge: bytes) -> bytes:
        """Our challenge, our proof (HMAC over both challenges and our identity), and our
        identity, for a client's challenge."""
        if len(client_challenge) != NONCE_BYTES:
            raise ValueError("a challenge is 16 bytes")
        mine = self._challenge(int(time.time()), os.urandom(8))
        name = self.identity.encode()
        return mine + _mac(self._key, b"server", client_challenge, mine, name) + name

    def accepts(self, header: str | bytes) -> bool:
        """Whether ``header`` (``CHALLENGE:PROOF`` in hex) proves the key over a challenge
        of ours that is still good, for our identity."""
        text = header.decode() if isinstance(header, bytes) else header
        try:
            challenge, proof = (bytes.fromhex(part) for part in text.split(":", 1))
        except ValueError:
            return False
        if len(challenge) != 2 * NONCE_BYTES:
            return False
        issued, salt = int.from_bytes(challenge[:8], "big"), challenge[8:NONCE_BYTES]
        if not hmac.compare_digest(challenge, self._challenge(issued, salt)):
            return False  # not one of ours
        if not 0 <= time.time() - issued <= CHALLENGE_TTL_S:
            return False
        return hmac.compare_digest(proof, _mac(self._key, b"client", challenge, self.identity.encode()))


class ImpostorError(RuntimeError):
    """A server did not prove that it holds the shared key, or is not what the client
    expected; nothing was sent to it."""


class ClientAuth:
    """A client's side, per server: the metadata that proves the key to that server, made
    once the server has proved it holds the key itself and is ``expect`` (an identity, or
    a test of one). ``None`` key: no metadata."""

    def __init__(self, key: str | None, address: str = "the server", expect: str | Callable[[str], bool] = ""):
        self._key = key.encode() if key else None
        self._address = address
        self._expect = expect
        self._metadata: tuple[tuple[str, str], ...] | None = None if key else ()
        self.made_at = 0.0  # time.monotonic() of the proof in use

    def forget(self) -> None:
        """Challenge the server again before the next call (it restarted, refused us, or
        the proof is getting old)."""
        if self._key is not None:
            self._metadata = None

    def _expected(self, identity: str) -> bool:
        role = identity.split("#", 1)[0]  # what the server is, without which process
        if callable(self._expect):
            return self._expect(role)
        return not self._expect or role == self._expect

    def _check(self, mine: bytes, reply: bytes) -> tuple[tuple[str, str], ...]:
        size = 2 * NONCE_BYTES
        theirs, proof, name = reply[:size], reply[size : size + 32], reply[size + 32 :]
        if len(theirs) != size or not hmac.compare_digest(proof, _mac(self._key, b"server", mine, theirs, name)):
            raise ImpostorError(
                f"{self._address} did not prove that it holds the shared key (--token): nothing was sent to it; "
                "is it the process you meant, started with the same key?"
            )
        identity = name.decode(errors="replace")
        if not self._expected(identity):
            identity = identity.split("#", 1)[0]
            wanted = repr(self._expect) if isinstance(self._expect, str) else "what was expected"
            raise ImpostorError(
                f"{self._address} holds the key but is {identity!r}, not {wanted}: nothing was sent to it "
                "(a process relaying another server's answers, or the wrong address)"
            )
        self.made_at = time.monotonic()
        return ((AUTH_HEADER, f"{theirs.hex()}:{_mac(self._key, b'client', theirs, name).hex()}"),)

    def _without_challenge(self, error: grpc.RpcError) -> tuple[tuple[str, str], ...]:
        # A server with no Challenge method was started without a key: it cannot prove one,
        # so it gets nothing, whatever it may accept.
        if error.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise ImpostorError(
                f"{self._address} runs without a key (it has no challenge to answer), but this client has one: "
                "nothing was sent to it; start it with the same --token"
            )
        raise error

    def metadata(self, channel: grpc.Channel, timeout_s: float = 5.0) -> tuple[tuple[str, str], ...]:
        """The metadata for a call on a blocking ``channel`` (challenging the server first if needed)."""
        if self._metadata is None:
            mine = os.urandom(NONCE_BYTES)
            try:
                reply = channel.unary_unary(CHALLENGE_METHOD)(mine, timeout=timeout_s)
            except grpc.RpcError as err:
                self._without_challenge(err)
            self._metadata = self._check(mine, reply)
        return self._metadata

    async def ametadata(self, channel: aio.Channel, timeout_s: float = 5.0) -> tuple[tuple[str, str], ...]:
        """``metadata`` on an asyncio ``channel``."""
        if self._metadata is None:
            mine = os.urandom(NONCE_BYTES)
            try:
                reply = await channel.unary_unary(CHALLENGE_METHOD)(mine, timeout=timeout_s)
            except aio.AioRpcError as err:
                self._without_challenge(err)
            self._metadata = self._check(mine, reply)
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


def make_server(token: str | None, limits: ServerLimits = ServerLimits(), identity: str = "") -> aio.Server:
    """An asyncio gRPC server with size and connection limits and, with a key, its
    challenge and checks; ``identity``: what it is to its clients (``ServerAuth``)."""
    auth = ServerAuth(token, identity) if token else None
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
