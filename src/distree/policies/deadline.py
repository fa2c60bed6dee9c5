"""The deadline rule, usable with any policy."""

from __future__ import annotations

import torch


def should_stop_for_deadline(
    elapsed_ms: float | torch.Tensor, next_stage_ms: float, deadline_ms: float | torch.Tensor | None
) -> bool | torch.Tensor:
    """Stop now if the next stage, started now, would end after the deadline.

    ``elapsed_ms`` is the time already spent on the request, ``next_stage_ms`` the expected
    time of the next stage (compute + transfer + fusion); no deadline (None, or inf) never
    stops. Elementwise on tensors of rows (then a bool tensor).
    """
    if deadline_ms is None:
        return False
    if bool((torch.as_tensor(elapsed_ms) < 0).any()) or next_stage_ms < 0:
        raise ValueError("times must be non-negative")
    if bool((torch.as_tensor(deadline_ms) <= 0).any()):
        raise ValueError("a deadline must be positive")
    return elapsed_ms + next_stage_ms > deadline_ms
