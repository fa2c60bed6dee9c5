"""The exit-policy interface.

A policy gives each exit e a *score* computed only from the outputs of exits 0..e, and
stops at the first exit whose score reaches that exit's threshold; the last exit always
stops. The same ``score`` serves a batch in offline evaluation and a single request in
the runtime (a batch of one), so the two cannot disagree. Policies hold no per-request
state: whatever they need from earlier exits is passed in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch


class ExitPolicy(ABC):
    """Scores exits; thresholds are per exit and come from calibration."""

    name: str
    #: False for policies that use no thresholds (full execution, oracle).
    calibrated: bool = True

    @abstractmethod
    def score(self, e: int, logits: Sequence[torch.Tensor], embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """Score (B,) at exit ``e`` from the logits (B, K) and embeddings (B, D) of exits 0..e.

        Higher means more confident that stopping now is safe; -inf means never stop here.
        """

    def should_exit(
        self,
        e: int,
        logits: Sequence[torch.Tensor],
        embeddings: Sequence[torch.Tensor],
        thresholds: Sequence[float],
    ) -> torch.Tensor:
        """(B,) bool: stop at exit ``e``. The last exit (index len(thresholds)) always stops."""
        if e >= len(thresholds):
            return torch.ones(logits[e].shape[0], dtype=torch.bool)
        return self.score(e, logits, embeddings) >= thresholds[e]


def exit_scores(policy: ExitPolicy, logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Scores (E, N) of every exit for recorded exit outputs logits (E, N, K), embeddings (E, N, D)."""
    return torch.stack([policy.score(e, logits[: e + 1], embeddings[: e + 1]) for e in range(logits.shape[0])])


def first_passing(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Exit index (N,) per sample: the first exit whose score reaches its threshold.

    ``scores`` is (E, N); ``thresholds`` has E - 1 entries (the last exit always stops).
    """
    if len(thresholds) != scores.shape[0] - 1:
        raise ValueError(f"need {scores.shape[0] - 1} thresholds for {scores.shape[0]} exits, got {len(thresholds)}")
    stop = np.ones(scores.shape, dtype=bool)
    stop[:-1] = scores[:-1] >= np.asarray(thresholds, dtype=scores.dtype)[:, None]
    return stop.argmax(0)


def decide_exits(scores: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """``first_passing`` for a tensor of scores (E, N); returns int64 (N,)."""
    return torch.from_numpy(first_passing(scores.double().numpy(), thresholds))
