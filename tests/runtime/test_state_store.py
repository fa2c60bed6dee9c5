"""A worker's state store: its limits on the whole worker and per coordinator session."""

import pytest
import torch

from distree.runtime.state_store import GroupState, StateStore, StoreFull
from distree.runtime.worker import WorkerOptions


def _state(session, kib: int = 1) -> GroupState:
    return GroupState(0, torch.zeros(kib * 1024, dtype=torch.uint8), session)


def test_one_session_cannot_take_a_worker_that_others_share():
    store = StateStore("0", ttl_s=30, max_states=4, max_session_states=2)
    a, b = object(), object()
    store.put("a1", _state(a))
    store.put("a2", _state(a))
    with pytest.raises(StoreFull, match="--max-session-states"):
        store.put("a3", _state(a))
    store.put("b1", _state(b))  # another coordinator still gets its share
    store.put("b2", _state(b))
    with pytest.raises(StoreFull, match="--max-states"):  # ...and the worker's own limit holds
        store.put("c1", _state(object()))
    store.finish("a1")
    store.put("a3", _state(a))  # room again once a request of that session is done


def test_session_bytes_are_limited_and_only_the_session_s_own_count():
    store = StateStore("0", ttl_s=30, max_bytes=10 * 1024, max_session_bytes=3 * 1024)
    a, b = object(), object()
    store.put("a1", _state(a, 2))
    with pytest.raises(StoreFull, match="--max-session-state-mib"):
        store.put("a2", _state(a, 2))
    store.put("b1", _state(b, 3))
    store.put("debug", _state(None, 4))  # a debug call outside any session: worker limits only
    with pytest.raises(StoreFull, match="--max-state-mib"):
        store.put("b2", _state(object(), 2))


def test_without_session_limits_the_worker_s_apply():
    store = StateStore("0", ttl_s=30, max_states=2)
    a = object()
    store.put("a1", _state(a))
    store.put("a2", _state(a))
    with pytest.raises(StoreFull, match="--max-states"):
        store.put("a3", _state(a))


@pytest.mark.parametrize(
    "bad", [{"max_session_states": 0}, {"max_session_state_mib": 0.0}, {"max_session_state_mib": -1.0}]
)
def test_bad_session_limits_are_refused(bad):
    with pytest.raises(ValueError, match="session"):
        WorkerOptions(**bad)
