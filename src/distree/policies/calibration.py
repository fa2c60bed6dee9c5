"""Per-exit thresholds for a QoS target, fitted on the validation split.

Two targets: (a) the least mean computation whose accuracy is at most ``max_drop_pp``
points below full execution, or (b) the best accuracy whose mean computation is at most
``budget`` times that of full execution. The search is over a grid of each exit's score
quantiles: every combination when there are few, else coordinate descent started from
the best points of the family "the same quantile at every exit".

A drop target holds on new data at a stated confidence (Learn then Test, Angelopoulos et
al. 2021): the validation split is cut in two at random. A third gives a path of threshold
settings, from full execution to ever cheaper ones (the cheapest setting with at most k
losses, for a ladder of k). The other two thirds test them in that order
(fixed-sequence testing): a setting is accepted while an upper confidence bound on its
paired drop stays within the target, and the last accepted one is the result (full
execution, first on the path, has no drop and needs no test). The bound is
Clopper-Pearson's upper bound on the rate of "full execution right, policy wrong" minus
its lower bound on "policy right, full execution wrong", each at (1 - confidence) / 2.
Then P(drop on the population > target) <= 1 - confidence.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta

from distree.policies.base import first_passing
from distree.policies.calibration_file import Calibration

GRID = 96
EXHAUSTIVE_LIMIT = 12_000
DEFAULT_CONFIDENCE = 0.9
#: Share of the calibration samples that fit the path; the rest test it.
FIT_SHARE = 1 / 3


@dataclass(frozen=True)
class Outcome:
    """What a threshold setting gives on a set of recorded samples."""

    accuracy: float
    macs_per_sample: float
    exit_histogram: list[int]
    losses: int = 0  # samples right at full execution and wrong where the policy stopped
    gains: int = 0  # samples wrong at full execution and right where the policy stopped


def outcome(scores: torch.Tensor, correct: torch.Tensor, exit_macs: torch.Tensor, thresholds: list[float]) -> Outcome:
    """Accuracy, mean MACs and exit histogram of ``thresholds``.

    ``scores`` and ``correct`` are (E, N); ``exit_macs`` (E,) is the cost of stopping at each
    exit, or (E, N) with a cost per sample.
    """
    return _Recorded(scores, correct, exit_macs).outcome(thresholds)


class _Recorded:
    """Recorded scores as numpy arrays: the search evaluates thousands of settings.

    ``exit_macs`` is (E,), or (E, N) when the cost differs per sample (samples recorded
    with different branches present)."""

    def __init__(self, scores: torch.Tensor, correct: torch.Tensor, exit_macs: torch.Tensor):
        self.scores = scores.double().numpy()
        self.correct = correct.numpy()
        macs = exit_macs.double().numpy()
        self.macs = np.broadcast_to(macs[:, None], self.scores.shape) if macs.ndim == 1 else macs
        if self.macs.shape != self.scores.shape:
            raise ValueError(f"exit costs {tuple(macs.shape)} do not match scores {self.scores.shape}")
        self.idx = np.arange(self.scores.shape[1])
        # The searches come back to the same settings many times (each loss count of the
        # ladder descends again from the same family): each is measured once.
        self._outcomes: dict[tuple[float, ...], Outcome] = {}

    def subset(self, idx: np.ndarray) -> _Recorded:
        """The same records for the samples ``idx`` only."""
        parts = (self.scores[:, idx], self.correct[:, idx], self.macs[:, idx])
        return _Recorded(*(torch.from_numpy(np.ascontiguousarray(a)) for a in parts))

    def outcome(self, thresholds: list[float]) -> Outcome:
        key = tuple(thresholds)
        if key not in self._outcomes:
            self._outcomes[key] = self._measure(thresholds)
        return self._outcomes[key]

    def _measure(self, thresholds: list[float]) -> Outcome:
        exits = first_passing(self.scores, thresholds)
        stopped, full = self.correct[exits, self.idx], self.correct[-1]
        return Outcome(
            accuracy=float(stopped.mean()),
            macs_per_sample=float(self.macs[exits, self.idx].mean()),
            exit_histogram=np.bincount(exits, minlength=self.scores.shape[0]).tolist(),
            losses=int((full & ~stopped).sum()),
            gains=int((stopped & ~full).sum()),
        )


def drop_upper_bound(losses: int, gains: int, n: int, confidence: float) -> float:
    """Upper confidence bound (fraction) on the paired drop P(loss) - P(gain) from ``n`` samples.

    Clopper-Pearson upper bound on the loss rate minus lower bound on the gain rate, each
    at level (1 - confidence) / 2, so the difference holds at ``confidence`` (Bonferroni).
    """
    if n < 1:
        raise ValueError("a bound needs at least one sample")
    a = (1 - confidence) / 2
    upper = 1.0 if losses >= n else float(beta.ppf(1 - a, losses + 1, n - losses))
    lower = 0.0 if gains == 0 else float(beta.ppf(a, gains, n - gains + 1))
    return upper - lower


def candidate_thresholds(scores: torch.Tensor, grid: int = GRID) -> list[list[float]]:
    """For every exit but the last: quantiles of its finite scores, plus +inf (never stop)."""
    out = []
    q = torch.linspace(0, 1, grid, dtype=torch.float64)
    for e in range(scores.shape[0] - 1):
        s = scores[e][torch.isfinite(scores[e])].double()
        values = torch.unique(torch.quantile(s, q)).tolist() if s.numel() else []
        out.append([*values, float("inf")])
    return out


def quantile_family(cands: list[list[float]], steps: int = GRID) -> list[list[float]]:
    """Threshold vectors that put the same relative strictness at every exit, loosest first."""
    fam = []
    for i in range(steps + 1):
        f = i / steps
        fam.append([c[min(len(c) - 1, round(f * (len(c) - 1)))] for c in cands])
    return fam


def calibrate(
    scores: torch.Tensor,
    correct: torch.Tensor,
    exit_macs: torch.Tensor,
    full_macs: float,
    max_drop_pp: float | None = None,
    budget: float | None = None,
    passes: int = 4,
    confidence: float | None = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Calibration:
    """Fit per-exit thresholds for one target (exactly one of ``max_drop_pp``, ``budget``).

    With ``max_drop_pp`` and a ``confidence``, the drop target holds on new data from the
    same distribution with that probability (module docstring); ``confidence=None`` fits
    the given samples exactly, with no margin. A budget is met on the given samples.
    """
    if (max_drop_pp is None) == (budget is None):
        raise ValueError("give exactly one target: max_drop_pp or budget")
    if max_drop_pp is not None and max_drop_pp < 0:
        raise ValueError(f"max_drop_pp must be >= 0, got {max_drop_pp}")
    if budget is not None and not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction in (0, 1], got {budget}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rec = _Recorded(scores, correct, exit_macs)
    if budget is not None or confidence is None:
        cands = candidate_thresholds(scores)
        return _fit(rec, cands, full_macs, max_drop_pp, budget, passes, _grid(rec, cands))
    return calibrate_targets(scores, correct, exit_macs, full_macs, [max_drop_pp], confidence, seed, passes)[0]


def _fit(rec: _Recorded, cands, full_macs, max_drop_pp, budget, passes, grid=None, max_losses=None) -> Calibration:
    """The best setting on ``rec`` itself (no margin): the cheapest within a drop (or within
    ``max_losses`` samples that full execution gets right and the setting gets wrong), or
    the most accurate within a budget."""
    full_acc = float(rec.correct[-1].mean())

    def feasible(o: Outcome) -> bool:
        if max_losses is not None:
            return o.losses <= max_losses
        if max_drop_pp is not None:
            return (full_acc - o.accuracy) * 100 <= max_drop_pp + 1e-9
        return o.macs_per_sample <= budget * full_macs * (1 + 1e-9)

    def key(o: Outcome) -> tuple[float, float]:
        if budget is None:
            return (o.macs_per_sample, -o.accuracy)
        return (-o.accuracy, o.macs_per_sample)

    found = [(t, o) for t, o in (grid or _family(rec, cands)) if feasible(o)]
    if not found:
        cheapest = [c[0] for c in cands]
        o = rec.outcome(cheapest)
        message = (
            f"target cannot be met: even the earliest exits cost {o.macs_per_sample / full_macs:.1%} "
            f"of full execution, above the budget of {budget:.1%}"
            if budget is not None
            else "target cannot be met"
        )
        return _result(cheapest, o, full_acc, full_macs, False, message)
    if grid is not None:
        best_t, best = min(found, key=lambda to: key(to[1]))
    else:
        # Many exits: coordinate descent from the best few points of the family.
        starts = sorted(found, key=lambda to: key(to[1]))[:3]
        best_t, best = min(
            (_descend(rec, cands, t, o, feasible, key, passes) for t, o in starts), key=lambda to: key(to[1])
        )
    return _result(best_t, best, full_acc, full_macs, True, "target met on the calibration split")


def _family(rec: _Recorded, cands) -> list[tuple[list[float], Outcome]]:
    return [(t, rec.outcome(t)) for t in quantile_family(cands)]


def _grid(rec: _Recorded, cands) -> list[tuple[list[float], Outcome]] | None:
    """Every combination of the per-exit grids with its outcome, when there are few enough."""
    if math.prod(len(c) for c in cands) > EXHAUSTIVE_LIMIT:
        return None
    return [(list(t), rec.outcome(list(t))) for t in itertools.product(*cands)] + _family(rec, cands)


def _loss_ladder(n: int) -> list[int]:
    """Loss counts 0, 1, 2, 3, 4, 6, 8, ... (about 1.4x apart) up to ``n``."""
    ladder, k = [], 0
    while k <= n:
        ladder.append(k)
        k = max(k + 1, round(k * 1.4))
    return ladder


def _cheapest_per_loss(rec: _Recorded, full_macs: float, passes: int) -> dict[int, tuple[list[float], float]]:
    """For each loss count k of the ladder: the cheapest setting on ``rec`` in which at
    most k samples that full execution gets right end up wrong, and its MACs per sample."""
    cands = candidate_thresholds(torch.from_numpy(rec.scores))
    grid = _grid(rec, cands)
    found = {}
    for k in _loss_ladder(rec.scores.shape[1]):
        c = _fit(rec, cands, full_macs, None, None, passes, grid, max_losses=k)
        if c.met:
            found[k] = (list(c.thresholds), c.macs_per_sample)
    return found


def _choice_path(fits: Sequence[_Recorded], full_macs: float, passes: int) -> list[tuple[int, list[float]]]:
    """(candidate, setting) pairs from full execution (candidate 0, never stopping early)
    to ever cheaper ones: for each loss count of the ladder, the cheapest pair on the
    fitting records ``fits`` (one per candidate, the same samples) with at most that many
    losses."""
    best: dict[int, tuple[float, int, list[float]]] = {}  # loss count -> (macs, candidate, thresholds)
    for c, rec in enumerate(fits):
        for k, (t, macs) in _cheapest_per_loss(rec, full_macs, passes).items():
            if k not in best or macs < best[k][0]:
                best[k] = (macs, c, t)
    path = [(0, [math.inf] * (fits[0].scores.shape[0] - 1))]
    for _, c, t in sorted(best.values(), key=lambda v: -v[0]):  # most expensive first
        if (c, t) not in path:
            path.append((c, t))
    return path


def calibration_path(rec: _Recorded, full_macs: float, passes: int = 4) -> list[list[float]]:
    """Threshold settings from full execution to ever cheaper ones: for each of a ladder
    of loss counts k (0, 1, 2, 3, 4, 6, 8, ... about 1.4x apart), the cheapest setting on
    ``rec`` in which at most k samples that full execution gets right end up wrong. Few
    losses come first, so the steps are small where a bound is tightest."""
    return [t for _, t in _choice_path([rec], full_macs, passes)]


def calibrate_targets(
    scores: torch.Tensor,
    correct: torch.Tensor,
    exit_macs: torch.Tensor,
    full_macs: float,
    targets_pp: list[float],
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    passes: int = 4,
) -> list[Calibration]:
    """``calibrate`` with a confidence for several drop targets, sharing one path."""
    chosen = _tested_path([(scores, correct, exit_macs)], full_macs, targets_pp, confidence, seed, passes)
    return [cal for _, cal in chosen]


def calibrate_choice(
    candidates: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    full_macs: float,
    max_drop_pp: float,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    passes: int = 4,
) -> tuple[int, Calibration]:
    """Choose one of several candidates and its thresholds for a drop target held at
    ``confidence``: each candidate is (scores, correct, costs) of a sequence of decision
    points on the same samples (a schedule's steps), the last of every one full execution.

    As ``calibrate_targets``, with the choice inside the test: the fitting third gives,
    for each loss count of the ladder, the cheapest (candidate, setting) with at most that
    many losses, and the held-out part tests them in order of decreasing cost. The first
    candidate's full execution starts the path. Returns the candidate's index and its
    calibration (on all the given samples)."""
    return _tested_path(candidates, full_macs, [max_drop_pp], confidence, seed, passes)[0]


def _tested_path(
    candidates: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    full_macs: float,
    targets_pp: Sequence[float],
    confidence: float,
    seed: int,
    passes: int,
) -> list[tuple[int, Calibration]]:
    """Per drop target: the (candidate, calibration) that fixed-sequence testing of the
    choice path on the held-out part reaches."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    negative = [t for t in targets_pp if t < 0]
    if negative:
        raise ValueError(f"max_drop_pp must be >= 0, got {negative[0]}")
    if not candidates:
        raise ValueError("no candidate to choose from")
    recs = [_Recorded(*c) for c in candidates]
    n = recs[0].scores.shape[1]
    if any(r.scores.shape[1] != n for r in recs):
        raise ValueError("every candidate needs records of the same samples")
    # Every drop is measured against one full execution: each candidate's last decision point.
    if any(not np.array_equal(r.correct[-1], recs[0].correct[-1]) for r in recs):
        raise ValueError("every candidate must end with the same full execution (its last row)")
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * FIT_SHARE)
    fit_idx, held_idx = np.sort(order[:cut]), np.sort(order[cut:])
    # The order of the tests comes from the fitting part alone (its score grid included).
    path = _choice_path([r.subset(fit_idx) for r in recs], full_macs, min(passes, 2))
    held = [r.subset(held_idx) for r in recs]
    held_n = len(held_idx)
    # path[0] is full execution: its drop is 0 by definition, so it needs no test (and no
    # power is spent on it). The others are tested in order on the held-out part.
    bounds = [0.0]
    for c, t in path[1:]:
        o = held[c].outcome(t)
        bounds.append(drop_upper_bound(o.losses, o.gains, held_n, confidence) * 100)
    full_acc = float(recs[0].correct[-1].mean())
    out = []
    for target in targets_pp:
        # Fixed-sequence testing: walk the path, stop at the first setting whose bound fails.
        chosen = 0
        for i in range(1, len(bounds)):
            if bounds[i] > target + 1e-9:
                break
            chosen = i
        c, t = path[chosen]
        if chosen == 0:
            msg = (
                f"met by full execution only: no early-exit setting's bound at {confidence:.0%} confidence was "
                f"within {target} pp on {held_n} held-out samples (a looser target, a lower confidence or more "
                "validation samples leave room for early exits)"
            )
        else:
            bound = f"bound {bounds[chosen]:.2f} pp on {held_n} held-out samples"
            msg = f"target met at {confidence:.0%} confidence ({bound})"
        cal = _result(t, recs[c].outcome(t), full_acc, full_macs, True, msg, bounds[chosen], confidence, held_n)
        out.append((c, cal))
    return out


def _descend(rec, cands, best_t, best, feasible, key, passes):
    """Improve one exit's threshold at a time while any change helps."""
    for _ in range(passes):
        improved = False
        for e in range(len(cands)):
            for c in cands[e]:
                t = list(best_t)
                t[e] = c
                o = rec.outcome(t)
                if feasible(o) and key(o) < key(best):
                    best_t, best, improved = t, o, True
        if not improved:
            break
    return best_t, best


def _result(
    t: list[float],
    o: Outcome,
    full_acc: float,
    full_macs: float,
    met: bool,
    msg: str,
    bound: float | None = None,
    confidence: float | None = None,
    held_out: int | None = None,
) -> Calibration:
    return Calibration(
        thresholds=t,
        accuracy=o.accuracy,
        drop_pp=(full_acc - o.accuracy) * 100,
        macs_per_sample=o.macs_per_sample,
        saving=1 - o.macs_per_sample / full_macs,
        met=met,
        message=msg,
        drop_bound_pp=bound,
        confidence=confidence,
        held_out=held_out,
    )
