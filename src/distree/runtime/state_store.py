"""A worker's Group states: each group's feature map between its stages.

A state is dropped at once on Drop, when its call or session is cancelled, and after a
time-to-live when the coordinator went silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from distree.runtime import metrics

log = logging.getLogger("distree.worker")

BUSY = -1  # a state's next_stage while one of its stages runs


@dataclass
class GroupState:
    """One group's place on this worker."""

    next_stage: int
    activation: Any  # the backend's feature map (``stage_runner.State``)
    session: object = None  # the Session stream that started the request, if any
    touched: float = field(default_factory=time.monotonic)


class StoreFull(RuntimeError):
    """A new group would pass the store's limits."""


#: Why a group's state goes before its last stage: the coordinator stopped it (it
#: exited), cancelled it (its call ended), or it went silent past the TTL.
DROP_REASONS = ("stop", "cancel", "expired")


class StateStore:
    """Group states by group id, with their time-to-live and limits on how many are
    held and how many bytes their feature maps take: on the whole worker, and per Session
    stream (one per coordinator), so that one coordinator cannot take a worker shared
    with others. A session limit of None is the worker's."""

    def __init__(
        self,
        label: str,
        ttl_s: float,
        max_states: int = 4096,
        max_bytes: int = 1 << 30,
        *,
        max_session_states: int | None = None,
        max_session_bytes: int | None = None,
    ):
        self.label = label
        # Every series exists from the start, at 0: a dashboard's rate() sees the first drop.
        for reason in DROP_REASONS:
            metrics.STATES_DROPPED.labels(label, reason)
        metrics.ACTIVE_STATES.labels(label).set(0)
        self.ttl_s = ttl_s
        self.max_states = max_states
        self.max_bytes = max_bytes
        self.max_session_states = max_session_states or max_states
        self.max_session_bytes = max_session_bytes or max_bytes
        self._states: dict[str, GroupState] = {}
        self.dropped = 0
        self.expired = 0
        self._expiry: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, group_id: str) -> bool:
        return group_id in self._states

    def get(self, group_id: str) -> GroupState | None:
        """The group's state, or None."""
        return self._states.get(group_id)

    @property
    def bytes(self) -> int:
        """Bytes of every held feature map."""
        return sum(s.activation.nbytes for s in self._states.values())

    def put(self, group_id: str, state: GroupState) -> None:
        """Hold a new group's state; StoreFull when that would pass a limit."""
        if len(self._states) >= self.max_states:
            raise StoreFull(f"this worker holds {len(self._states)} groups, its limit (--max-states)")
        held = self.bytes
        if held + state.activation.nbytes > self.max_bytes:
            raise StoreFull(
                f"this worker holds {held / 2**20:.0f} MiB of group state; this group would pass its limit "
                f"of {self.max_bytes / 2**20:.0f} MiB (--max-state-mib)"
            )
        if state.session is not None:
            mine = [s for s in self._states.values() if s.session is state.session]
            if len(mine) >= self.max_session_states:
                raise StoreFull(
                    f"this coordinator's session holds {len(mine)} groups on this worker, "
                    "its limit (--max-session-states)"
                )
            held = sum(s.activation.nbytes for s in mine)
            if held + state.activation.nbytes > self.max_session_bytes:
                raise StoreFull(
                    f"this coordinator's session holds {held / 2**20:.0f} MiB of group state on this worker; "
                    f"this group would pass its limit of {self.max_session_bytes / 2**20:.0f} MiB "
                    "(--max-session-state-mib)"
                )
        self._states[group_id] = state
        metrics.ACTIVE_STATES.labels(self.label).set(len(self._states))

    def finish(self, group_id: str) -> None:
        """Forget a group that ran its last stage."""
        if self._states.pop(group_id, None) is not None:
            metrics.ACTIVE_STATES.labels(self.label).set(len(self._states))

    def drop(self, group_id: str, reason: str) -> bool:
        """Forget a group before its last stage (reason: one of ``DROP_REASONS``)."""
        if self._states.pop(group_id, None) is None:
            return False
        if reason == "expired":
            self.expired += 1
        else:
            self.dropped += 1
        metrics.STATES_DROPPED.labels(self.label, reason).inc()
        metrics.ACTIVE_STATES.labels(self.label).set(len(self._states))
        return True

    def drop_session(self, session: object) -> None:
        """Forget every group a Session stream started (it ended without handover)."""
        for gid in [r for r, s in self._states.items() if s.session is session]:
            self.drop(gid, "cancel")

    def start(self) -> None:
        """Start expiring silent states (inside the event loop)."""
        self._expiry = asyncio.get_running_loop().create_task(self._expire_loop())

    def stop(self) -> None:
        """Stop expiring."""
        if self._expiry is not None:
            self._expiry.cancel()

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.ttl_s / 4))
            cutoff = time.monotonic() - self.ttl_s
            for gid in [r for r, s in self._states.items() if s.touched < cutoff]:
                log.info("state expired", extra={"group_id": gid})
                self.drop(gid, "expired")
