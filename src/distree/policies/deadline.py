"""The deadline rule, usable with any policy."""

from __future__ import annotations

import numpy as np

from distree.exits import Array


def should_stop_for_deadline(
    elapsed_ms: float | Array, next_stage_ms: float, deadline_ms: float | Array | None
) -> bool | Array:
    """Stop now if the next stage, started now, would end after the deadline.

    ``elapsed_ms`` is the time already spent on the request, ``next_stage_ms`` the expected
    time of the next stage (compute + transfer + fusion); no deadline (None, or inf) never
    stops. Elementwise on arrays of rows, torch or numpy (then a bool array).
    """
    if deadline_ms is None:
        return False
    if bool(np.any(np.asarray(elapsed_ms) < 0)) or next_stage_ms < 0:
        raise ValueError("times must be non-negative")
    if bool(np.any(np.asarray(deadline_ms) <= 0)):
        raise ValueError("a deadline must be positive")
    return elapsed_ms + next_stage_ms > deadline_ms
