"""The shared-key handshake as pure objects: what a server accepts, what a client sends."""

from __future__ import annotations

import grpc
import pytest

from distree.runtime import security
from distree.runtime.security import AUTH_HEADER, ClientAuth, ImpostorError, ServerAuth


class _Unimplemented(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNIMPLEMENTED


class _Channel:
    """A channel whose only method is the challenge, answered by ``server`` (None: a server
    without a key, which has no such method; "noise": random bytes)."""

    def __init__(self, server):
        self.server = server
        self.challenges = 0

    def unary_unary(self, method: str):
        assert method == security.CHALLENGE_METHOD

        def call(request: bytes, timeout: float) -> bytes:
            self.challenges += 1
            if self.server is None:
                raise _Unimplemented()
            return b"\1" * 80 if self.server == "noise" else self.server.answer(request)

        return call


def _header(metadata) -> str:
    (key, value), *_ = metadata
    assert key == AUTH_HEADER
    return value


def test_a_proof_is_good_on_the_process_that_challenged_only():
    w0, w0_restarted, w1 = (ServerAuth("k", who) for who in ("worker/0#a1", "worker/0#b2", "worker/1#c3"))
    header = _header(ClientAuth("k", expect="worker/0").metadata(_Channel(w0)))
    assert w0.accepts(header)
    assert not w0_restarted.accepts(header)  # the same branch, another process
    assert not w1.accepts(header) and not ServerAuth("other", "worker/0#a1").accepts(header)
    challenge, proof = header.split(":")
    assert not w0.accepts(f"{challenge}:{'0' * len(proof)}")
    assert not w0.accepts(f"{'0' * len(challenge)}:{proof}")  # a challenge the server never made
    assert not w0.accepts("not hex") and not w0.accepts("")


def test_a_client_sends_nothing_to_a_server_that_cannot_prove_the_key_or_is_another():
    with pytest.raises(ImpostorError, match="did not prove"):
        ClientAuth("k", "the worker at 10.0.0.7:50061").metadata(_Channel(ServerAuth("other key", "worker/1")))
    with pytest.raises(ImpostorError, match="did not prove"):
        ClientAuth("k").metadata(_Channel("noise"))
    with pytest.raises(ImpostorError, match="runs without a key"):
        ClientAuth("k").metadata(_Channel(None))
    # A process on worker 1's port relaying worker 0's answers holds no key, but the answer
    # checks out: it names worker/0, and the client expects worker/1.
    with pytest.raises(ImpostorError, match="is 'worker/0', not 'worker/1'"):
        ClientAuth("k", expect="worker/1").metadata(_Channel(ServerAuth("k", "worker/0#a1")))
    assert ClientAuth(None).metadata(_Channel(None)) == ()  # no key: nothing to prove, no challenge


def test_the_proof_is_made_once_until_forgotten():
    channel = _Channel(ServerAuth("k", "coordinator"))
    auth = ClientAuth("k", expect="coordinator")
    first = auth.metadata(channel)
    assert auth.metadata(channel) == first and channel.challenges == 1
    auth.forget()
    assert auth.metadata(channel) != first and channel.challenges == 2


def test_challenges_expire(monkeypatch):
    server = ServerAuth("k", "coordinator")
    header = _header(ClientAuth("k").metadata(_Channel(server)))
    now = security.time.time()
    monkeypatch.setattr(security.time, "time", lambda: now + security.CHALLENGE_TTL_S + 5)
    assert not server.accepts(header)
