"""The deadline rule, usable with any policy."""

from __future__ import annotations


def should_stop_for_deadline(elapsed_ms: float, next_stage_ms: float, deadline_ms: float | None) -> bool:
    """Stop now if the next stage, started now, would end after the deadline.

    ``elapsed_ms`` is the time already spent on the request, ``next_stage_ms`` the expected
    time of the next stage (compute + transfer + fusion); no deadline never stops.
    """
    if deadline_ms is None:
        return False
    if elapsed_ms < 0 or next_stage_ms < 0 or deadline_ms <= 0:
        raise ValueError("times must be non-negative and the deadline positive")
    return elapsed_ms + next_stage_ms > deadline_ms
