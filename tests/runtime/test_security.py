"""The shared-key handshake as pure objects: what a server accepts, what a client sends."""

from __future__ import annotations

import pytest

from distree.runtime import security
from distree.runtime.security import AUTH_HEADER, ClientAuth, ImpostorError, ServerAuth


class _Channel:
    """A channel whose only method is the challenge, answered by ``server``."""

    def __init__(self, server: ServerAuth | None):
        self.server = server
        self.challenges = 0

    def unary_unary(self, method: str):
        assert method == security.CHALLENGE_METHOD

        def call(request: bytes, timeout: float) -> bytes:
            self.challenges += 1
            return self.server.answer(request) if self.server else b"\0" * 48

        return call


def _header(metadata) -> str:
    (key, value), *_ = metadata
    assert key == AUTH_HEADER
    return value


def test_a_server_accepts_a_proof_over_its_own_challenge_only():
    a, b = ServerAuth("k"), ServerAuth("k")
    header = _header(ClientAuth("k").metadata(_Channel(a)))
    assert a.accepts(header)
    assert not b.accepts(header)  # another server, the same key: not its challenge
    challenge, proof = header.split(":")
    assert not a.accepts(f"{challenge}:{'0' * len(proof)}")
    assert not a.accepts("not hex") and not a.accepts("")


def test_a_client_sends_nothing_to_a_server_that_cannot_prove_the_key():
    with pytest.raises(ImpostorError, match="did not prove"):
        ClientAuth("k", "the worker at 10.0.0.7:50061").metadata(_Channel(ServerAuth("other key")))
    with pytest.raises(ImpostorError):
        ClientAuth("k").metadata(_Channel(None))  # noise
    assert ClientAuth(None).metadata(_Channel(None)) == ()  # no key: nothing to prove, no challenge


def test_the_proof_is_made_once_until_forgotten():
    channel = _Channel(ServerAuth("k"))
    auth = ClientAuth("k")
    first = auth.metadata(channel)
    assert auth.metadata(channel) == first and channel.challenges == 1
    auth.forget()
    assert auth.metadata(channel) != first and channel.challenges == 2


def test_challenges_expire_and_the_oldest_are_forgotten(monkeypatch):
    server = ServerAuth("k")
    header = _header(ClientAuth("k").metadata(_Channel(server)))
    now = security.time.monotonic()
    monkeypatch.setattr(security.time, "monotonic", lambda: now + security.CHALLENGE_TTL_S + 1)
    assert not server.accepts(header)
    monkeypatch.undo()
    monkeypatch.setattr(security, "MAX_CHALLENGES", 2)
    headers = [_header(ClientAuth("k").metadata(_Channel(server))) for _ in range(3)]
    assert not server.accepts(headers[0]) and server.accepts(headers[2])
