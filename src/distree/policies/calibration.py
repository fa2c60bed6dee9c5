"""Per-exit thresholds for a QoS target, fitted on the validation split.

Two targets: (a) the least mean computation whose accuracy is at most ``max_drop_pp``
points below full execution, or (b) the best accuracy whose mean computation is at most
``budget`` times that of full execution. The search is coordinate descent over each
exit's threshold on a grid of that exit's score quantiles, started from the best point
of the one-parameter family "the same quantile at every exit".
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from distree.policies.base import first_passing

GRID = 96
EXHAUSTIVE_LIMIT = 12_000


@dataclass(frozen=True)
class Outcome:
    """What a threshold setting gives on a set of recorded samples."""

    accuracy: float
    macs_per_sample: float
    exit_histogram: list[int]
    drop_se_pp: float = 0.0  # standard error of the drop against full execution, in points


@dataclass(frozen=True)
class Calibration:
    """Fitted thresholds and what they gave on the set they were fitted on."""

    thresholds: list[float]
    accuracy: float
    drop_pp: float
    macs_per_sample: float
    saving: float
    met: bool
    message: str

    def to_json(self) -> dict:
        """JSON-ready dict (infinite thresholds become null)."""
        d = asdict(self)
        d["thresholds"] = [None if math.isinf(t) else t for t in self.thresholds]
        return d

    @staticmethod
    def thresholds_from_json(values: list[float | None]) -> list[float]:
        """Inverse of the null encoding of ``to_json``."""
        return [float("inf") if v is None else float(v) for v in values]


def outcome(scores: torch.Tensor, correct: torch.Tensor, exit_macs: torch.Tensor, thresholds: list[float]) -> Outcome:
    """Accuracy, mean MACs and exit histogram of ``thresholds``.

    ``scores`` and ``correct`` are (E, N); ``exit_macs`` (E,) is the cost of stopping at each exit.
    """
    return _Recorded(scores, correct, exit_macs).outcome(thresholds)


class _Recorded:
    """Recorded scores as numpy arrays: the search evaluates thousands of settings."""

    def __init__(self, scores: torch.Tensor, correct: torch.Tensor, exit_macs: torch.Tensor):
        self.scores = scores.double().numpy()
        self.correct = correct.numpy()
        self.macs = exit_macs.double().numpy()
        self.idx = np.arange(self.scores.shape[1])

    def outcome(self, thresholds: list[float]) -> Outcome:
        exits = first_passing(self.scores, thresholds)
        return Outcome(
            accuracy=float(self.correct[exits, self.idx].mean()),
            macs_per_sample=float(self.macs[exits].mean()),
            exit_histogram=np.bincount(exits, minlength=self.scores.shape[0]).tolist(),
            drop_se_pp=float(self._diff_std(exits) / np.sqrt(len(exits)) * 100),
        )

    def _diff_std(self, exits: np.ndarray) -> float:
        # Paired per-sample difference: right at full execution minus right where it stopped.
        d = self.correct[-1].astype(np.float64) - self.correct[exits, self.idx]
        return float(d.std())


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
    z: float = 1.0,
) -> Calibration:
    """Fit per-exit thresholds for one target (exactly one of ``max_drop_pp``, ``budget``).

    With ``max_drop_pp``, a setting qualifies when its drop plus ``z`` standard errors
    (of the paired per-sample difference) stays within the target: the calibration split
    is a sample, and a target met with no margin there is missed about half the time on
    new data. ``z = 0`` fits the calibration split exactly.
    """
    if (max_drop_pp is None) == (budget is None):
        raise ValueError("give exactly one target: max_drop_pp or budget")
    if max_drop_pp is not None and max_drop_pp < 0:
        raise ValueError(f"max_drop_pp must be >= 0, got {max_drop_pp}")
    if budget is not None and not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction in (0, 1], got {budget}")
    full_acc = float(correct[-1].float().mean())

    def feasible(o: Outcome) -> bool:
        if max_drop_pp is not None:
            return (full_acc - o.accuracy) * 100 + z * o.drop_se_pp <= max_drop_pp + 1e-9
        return o.macs_per_sample <= budget * full_macs * (1 + 1e-9)

    def key(o: Outcome) -> tuple[float, float]:
        if max_drop_pp is not None:
            return (o.macs_per_sample, -o.accuracy)
        return (-o.accuracy, o.macs_per_sample)

    cands = candidate_thresholds(scores)
    rec = _Recorded(scores, correct, exit_macs)
    found = [(t, o) for t in quantile_family(cands) if feasible(o := rec.outcome(t))]
    if not found:
        cheapest = [c[0] for c in cands]
        o = rec.outcome(cheapest)
        return _result(
            cheapest,
            o,
            full_acc,
            full_macs,
            False,
            f"target cannot be met: even the earliest exits cost {o.macs_per_sample / full_macs:.1%} "
            f"of full execution, above the budget of {budget:.1%}",
        )
    if math.prod(len(c) for c in cands) <= EXHAUSTIVE_LIMIT:
        # Few exits: try every combination of the grid, which finds the grid optimum.
        found += [(list(t), o) for t in itertools.product(*cands) if feasible(o := rec.outcome(list(t)))]
        best_t, best = min(found, key=lambda to: key(to[1]))
    else:
        # Many exits: coordinate descent from the best few points of the family.
        starts = sorted(found, key=lambda to: key(to[1]))[:3]
        best_t, best = min(
            (_descend(rec, cands, t, o, feasible, key, passes) for t, o in starts), key=lambda to: key(to[1])
        )
    return _result(best_t, best, full_acc, full_macs, True, "target met on the calibration split")


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


def _result(t: list[float], o: Outcome, full_acc: float, full_macs: float, met: bool, msg: str) -> Calibration:
    return Calibration(
        thresholds=t,
        accuracy=o.accuracy,
        drop_pp=(full_acc - o.accuracy) * 100,
        macs_per_sample=o.macs_per_sample,
        saving=1 - o.macs_per_sample / full_macs,
        met=met,
        message=msg,
    )
