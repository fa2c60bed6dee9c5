"""The exit-policy interface.

A policy gives each exit e a *score* computed only from the outputs of exits 0..e (an
``ExitRecords``: logits, fused embeddings and the branches' agreement of each exit), and
stops at the first exit whose score reaches that exit's threshold; the last exit always
stops. The same ``score`` serves a batch in offline evaluation and a single request in
the runtime (a batch of one), so the two cannot disagree. Policies hold no per-request
state: whatever they need from earlier exits is passed in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from distree.arrays import namespace
from distree.exits import Array, ExitRecords
from distree.policies.schedule import Schedule


class ExitPolicy(ABC):
    """Scores exits; thresholds are per exit and come from calibration.

    A policy says what it is through class attributes, never through its name: the stage
    loop, calibration, the runtime and the simulator read these and nothing else. Register
    a subclass with ``@register_policy`` (``distree.policies``) to make it usable by name.
    """

    #: The name users select it by (``--policy``, scenario files, calibration.json).
    name: str
    #: What the score reads, in a few words, for results tables; ``register_policy`` takes
    #: the first line of the class's docstring when a class does not set its own.
    criterion: str = ""
    #: The threshold at every exit for a policy that is not calibrated (full execution: inf,
    #: never stop early; oracle: 0, stop where the label says the exit is right); None for a
    #: policy whose thresholds calibration fits.
    fixed_threshold: float | None = None
    #: True for a policy whose score reads the labels (the oracle): offline evaluation only,
    #: never served.
    needs_labels: bool = False
    #: True for policies whose score reads ``ExitRecords.agreement``: only then does the
    #: runtime's stage loop ask the exit heads for it.
    reads_agreement: bool = False
    #: False for a policy that never stops before the last exit (full execution): nothing is
    #: decided on the way, so the stage loop runs an exit head only where rows leave, and
    #: only those heads are paid for.
    reads_exits: bool = True

    def __init__(self, labels: Array | None = None):
        if labels is not None and not self.needs_labels:
            raise ValueError(f"policy {self.name!r} does not read labels")
        self.labels = labels

    @property
    def calibrated(self) -> bool:
        """Whether calibration fits this policy's thresholds."""
        return self.fixed_threshold is None

    @property
    def servable(self) -> bool:
        """Whether the runtime can serve it (it needs nothing an online request lacks)."""
        return not self.needs_labels

    @abstractmethod
    def score(self, e: int, seen: ExitRecords) -> Array:
        """Score (B,) at exit ``e`` from the records of exits 0..e (logits (B, K), embeddings
        (B, D), agreement (B,) per exit): torch tensors or numpy arrays, and the score in
        the same kind (``distree.policies.scores`` has helpers that take either).

        Higher means more confident that stopping now is safe; -inf means never stop here.
        """

    def should_exit(self, e: int, seen: ExitRecords, thresholds: Sequence[float]) -> Array:
        """(B,) bool: stop at exit ``e``. The last exit (index len(thresholds)) always stops."""
        xp = namespace(seen.logits[e])
        if e >= len(thresholds):
            return xp.ones(seen.logits[e].shape[0], dtype=xp.bool)
        # In float64, as ``first_passing`` compares recorded scores: a score equal to its
        # threshold decides the same way online and offline.
        return xp.astype(self.score(e, seen), xp.float64) >= thresholds[e]


@dataclass(frozen=True)
class ExitThresholds:
    """A policy's per-exit thresholds (one per exit but the last, which always stops) for
    each number of branches present.

    Scores move when devices are missing: fused logits from fewer branches are less sharp
    and the branches' agreement is taken over fewer pairs, so thresholds fitted with every
    branch present stop too early (or too late) with fewer. Calibration therefore fits one
    setting per count, and the stage loop reads the one for the branches that answered.
    """

    by_present: Mapping[int, Sequence[float]]
    #: Exits over depth and devices: the schedule an input follows when every device is up
    #: and a threshold for each of its steps but the last (``per_step``). None: every
    #: device from the start, deciding at each exit with ``by_present``.
    schedule: Schedule | None = None
    per_step: Sequence[float] = ()

    def __post_init__(self) -> None:
        if self.schedule is not None and len(self.per_step) != len(self.schedule.steps) - 1:
            raise ValueError(
                f"schedule {self.schedule.label} has {len(self.schedule.steps)} steps and needs "
                f"{len(self.schedule.steps) - 1} thresholds, got {len(self.per_step)}"
            )

    @classmethod
    def same(cls, thresholds: Sequence[float], branches: int) -> ExitThresholds:
        """The same thresholds whatever the count (policies that use none, and tests)."""
        return cls({k: list(thresholds) for k in range(1, branches + 1)})

    def at(self, present: int) -> list[float]:
        """The thresholds for ``present`` branches."""
        if present not in self.by_present:
            raise ValueError(f"no thresholds for {present} branches present (have {sorted(self.by_present)})")
        return list(self.by_present[present])

    def depth_only(self) -> ExitThresholds:
        """The same policy with every device from the start (what a group runs when a
        device is down: the schedule's steps were calibrated with all of them up)."""
        return ExitThresholds(self.by_present)


def exit_scores(policy: ExitPolicy, records: ExitRecords) -> Array:
    """Scores (E, N) of every exit for recorded exit outputs (logits (E, N, K), ...)."""
    xp = namespace(records.logits[0])
    return xp.stack([policy.score(e, records.until(e)) for e in range(len(records.logits))])


def first_passing(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Exit index (N,) per sample: the first exit whose score reaches its threshold.

    ``scores`` is (E, N); ``thresholds`` has E - 1 entries (the last exit always stops).
    """
    if len(thresholds) != scores.shape[0] - 1:
        raise ValueError(f"need {scores.shape[0] - 1} thresholds for {scores.shape[0]} exits, got {len(thresholds)}")
    stop = np.ones(scores.shape, dtype=bool)
    stop[:-1] = scores[:-1] >= np.asarray(thresholds, dtype=scores.dtype)[:, None]
    return stop.argmax(0)


def decide_exits(scores: Array, thresholds: Sequence[float]) -> Array:
    """``first_passing`` for scores (E, N) in either kind of array; int64 (N,) in the same kind."""
    xp = namespace(scores)
    exits = first_passing(np.asarray(xp.astype(scores, xp.float64)), thresholds)
    return xp.asarray(exits, dtype=xp.int64)
