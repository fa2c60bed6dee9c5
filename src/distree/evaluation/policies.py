"""Exit policies on recorded exit outputs: calibration on validation, evaluation on test."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from distree.evaluation.predict import ExitRecords, fuse_exits, fuse_random_subsets
from distree.models import DistrEEStudent
from distree.policies import POLICIES, ExitThresholds, exit_scores, make_policy
from distree.policies.calibration import (
    DEFAULT_CONFIDENCE,
    Calibration,
    calibrate,
    calibrate_targets,
    candidate_thresholds,
    outcome,
    quantile_family,
)
from distree.run import RunDir

CALIBRATION_FILE = "calibration.json"
DEFAULT_MAX_DROP_PP = 0.5


def exit_costs(model: DistrEEStudent, policy: str, present: Sequence[int] | None = None) -> torch.Tensor:
    """MACs (E,) of stopping at each exit under ``policy``.

    Early-exit policies evaluate every head on the way; a policy that reads no exit on the
    way (full execution) runs only the head of the exit it stops at (the last, or where a
    deadline stops it).
    """
    macs = model.macs
    if make_policy(policy).reads_exits:
        return torch.tensor([float(macs.exit_cumulative(e, present)) for e in range(model.num_exits)])
    return torch.tensor([float(macs.stages_until(e, present) + macs.head[e]) for e in range(model.num_exits)])


def scores_and_correct(policy: str, rec: ExitRecords, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, N) scores of ``policy`` and (E, N) correctness of each exit's prediction."""
    scores = exit_scores(make_policy(policy, labels), rec)
    return scores, rec.logits.argmax(-1) == labels


def thresholds_for(policy: str, model: DistrEEStudent, saved: dict | None) -> ExitThresholds:
    """Thresholds of ``policy`` for ``model``: fixed for full/oracle, else read from a
    calibration (one setting per number of branches present)."""
    n, gaps = model.num_branches, model.num_exits - 1
    if policy == "full":
        return ExitThresholds.same([math.inf] * gaps, n)
    if policy == "oracle":
        return ExitThresholds.same([0.0] * gaps, n)
    if saved is None or policy not in saved["policies"]:
        raise ValueError(f"policy {policy!r} is not calibrated; run 'distree calibrate' first")
    entry = saved["policies"][policy]
    by_present = {n: entry["thresholds"]} | {int(k): c["thresholds"] for k, c in entry.get("by_present", {}).items()}
    if set(by_present) != set(range(1, n + 1)):
        raise ValueError(
            f"the calibration of {policy!r} has thresholds for {sorted(by_present)} branches present, not for "
            f"each of 1..{n}; run 'distree calibrate' again"
        )
    return ExitThresholds({k: Calibration.thresholds_from_json(t) for k, t in by_present.items()})


def calibrate_policies(
    model: DistrEEStudent,
    vectors: list[list[torch.Tensor]],
    val_labels: torch.Tensor,
    max_drop_pp: float | None,
    budget: float | None,
    policies: Sequence[str],
    confidence: float | None = DEFAULT_CONFIDENCE,
) -> dict:
    """Fit every calibrated policy in ``policies`` on the validation split's branch vectors;
    JSON-ready.

    Each policy gets a setting with every branch present and, under ``by_present``, one per
    smaller count k, fitted on the validation samples each fused with a random k-subset
    of the branches. The target is relative to full execution with the same branches, so
    it holds on average over which devices are missing.
    """
    target = {"max_drop_pp": max_drop_pp, "budget": budget, "confidence": confidence}
    out: dict = {"target": target, "split": "validation", "samples": int(val_labels.numel()), "policies": {}}
    everything = fuse_exits(model, vectors)
    mixtures = {k: fuse_random_subsets(model, vectors, k) for k in range(1, model.num_branches)}
    for name in policies:
        if not make_policy(name, val_labels).calibrated:
            continue
        entry = _calibrate_on(model, name, everything, val_labels, None, None, target).to_json()
        entry["by_present"] = {
            str(k): _calibrate_on(model, name, rec, val_labels, subsets, which, target).to_json()
            for k, (rec, subsets, which) in mixtures.items()
        }
        out["policies"][name] = entry
    return out


def _calibrate_on(
    model: DistrEEStudent,
    name: str,
    rec: ExitRecords,
    labels: torch.Tensor,
    subsets: list[tuple[int, ...]] | None,
    which: torch.Tensor | None,
    target: dict,
) -> Calibration:
    """``calibrate`` on records fused with every branch (``subsets`` None) or with the
    subset ``subsets[which[i]]`` for sample i, each sample costed with its own branches."""
    scores, correct = scores_and_correct(name, rec, labels)
    if subsets is None:
        costs, full = exit_costs(model, name), float(model.macs.full())
    else:
        costs = torch.stack([exit_costs(model, name, s) for s in subsets], dim=1)[:, which]  # (E, N)
        full = float(torch.tensor([float(model.macs.full(s)) for s in subsets])[which].mean())
    return calibrate(scores, correct, costs, full, **target)


def save_calibration(run: RunDir, calibration: dict) -> None:
    """Write RUN/calibration.json."""
    (run.path / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2) + "\n")


def load_calibration(run: RunDir) -> dict | None:
    """RUN/calibration.json, or None."""
    f = run.path / CALIBRATION_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def evaluate_policy(
    model: DistrEEStudent,
    policy: str,
    thresholds: list[float],
    rec: ExitRecords,
    labels: torch.Tensor,
    present: Sequence[int] | None = None,
) -> dict:
    """Accuracy, drop, MACs, saving and exit histogram of one policy on recorded outputs.

    ``saving_by_exit[e]`` is the part of the saving produced by the requests that stopped
    at exit e (what they did not compute, over all requests' full-execution cost); the
    entries sum to ``saving``, and the last one is negative when the heads on the way cost
    more than full execution's single head.
    """
    scores, correct = scores_and_correct(policy, rec, labels)
    costs = exit_costs(model, policy, present)
    o = outcome(scores, correct, costs, thresholds)
    full_acc = float(correct[-1].float().mean())
    full_macs = float(model.macs.full(present))
    n = sum(o.exit_histogram)
    by_exit = [(full_macs - float(c)) * k / (n * full_macs) for c, k in zip(costs, o.exit_histogram)]
    return {
        "accuracy": round(o.accuracy, 4),
        "drop_pp": round((full_acc - o.accuracy) * 100, 2) + 0.0,  # no "-0.0"
        "macs_per_sample": round(o.macs_per_sample),
        "saving": round(1 - o.macs_per_sample / full_macs, 4),
        "saving_by_exit": [round(x, 4) + 0.0 for x in by_exit],
        "exit_histogram": o.exit_histogram,
    }


REPORTED_TARGETS_PP = (0.5, 1.0, 2.0)


def at_targets(
    model: DistrEEStudent,
    policy: str,
    val: ExitRecords,
    val_labels: torch.Tensor,
    test: ExitRecords,
    test_labels: torch.Tensor,
    confidence: float | None = DEFAULT_CONFIDENCE,
) -> dict:
    """Calibrated on validation for each drop target in ``REPORTED_TARGETS_PP``, measured
    on test: {target: {drop_pp, saving, saving_by_exit, bound_pp, met}}."""
    scores, correct = scores_and_correct(policy, val, val_labels)
    costs, full = exit_costs(model, policy), float(model.macs.full())
    targets = list(REPORTED_TARGETS_PP)
    if confidence is None:
        cals = [calibrate(scores, correct, costs, full, max_drop_pp=t, confidence=None) for t in targets]
    else:
        cals = calibrate_targets(scores, correct, costs, full, targets, confidence)
    out = {}
    for target, cal in zip(targets, cals):
        r = evaluate_policy(model, policy, cal.thresholds, test, test_labels)
        out[str(target)] = {
            "drop_pp": r["drop_pp"],
            "saving": r["saving"],
            "saving_by_exit": r["saving_by_exit"],
            "bound_pp": None if cal.drop_bound_pp is None else round(cal.drop_bound_pp, 3),
            "met": cal.met,
        }
    return out


def auroc(score: torch.Tensor, right: torch.Tensor) -> float | None:
    """AUROC (N,) scores for (N,) bool "right": the chance that a right sample scores above a
    wrong one (0.5 = no signal; ties count half). None when all are right or all wrong."""
    s, c = score.double().numpy(), right.numpy().astype(bool)
    if c.all() or not c.any():
        return None
    # -inf (never stop here) ties with -inf; a finite floor keeps the ranking defined.
    s = np.where(np.isneginf(s), np.finfo(np.float64).min, s)
    u = mannwhitneyu(s[c], s[~c], alternative="two-sided").statistic
    return float(u) / (c.sum() * (~c).sum())


def exit_auroc(policy: str, rec: ExitRecords, labels: torch.Tensor) -> list[float | None]:
    """Per exit but the last: AUROC of the policy's score for "this exit's prediction is right"."""
    scores, correct = scores_and_correct(policy, rec, labels)
    values = [auroc(scores[e], correct[e]) for e in range(scores.shape[0] - 1)]
    return [None if a is None else round(a, 4) for a in values]


def sweep_policy(
    model: DistrEEStudent,
    policy: str,
    val: ExitRecords,
    val_labels: torch.Tensor,
    test: ExitRecords,
    test_labels: torch.Tensor,
) -> list[dict]:
    """Accuracy vs computation on test over thresholds taken from validation score quantiles."""
    if policy in ("full", "oracle"):
        families = [thresholds_for(policy, model, None).at(model.num_branches)]
    else:
        vs, _ = scores_and_correct(policy, val, val_labels)
        families = quantile_family(candidate_thresholds(vs), steps=40)
    rows = []
    for i, t in enumerate(families):
        r = evaluate_policy(model, policy, t, test, test_labels)
        del r["exit_histogram"], r["saving_by_exit"]
        rows.append({"policy": policy, "step": i, **r})
    return rows


def branches_present_table(
    model: DistrEEStudent,
    vectors: list[list[torch.Tensor]],
    labels: torch.Tensor,
    saved: dict | None,
    policies: Sequence[str],
) -> dict:
    """Per policy and per k: mean accuracy, drop (pp, against full execution with the same
    branches) and saving over all k-subsets of branches, each with its thresholds for k."""
    n = model.num_branches
    table: dict = {}
    for k in range(1, n + 1):
        subsets = list(combinations(range(n), k))
        recs = [fuse_exits(model, vectors, s) for s in subsets]
        for name in policies:
            t = thresholds_for(name, model, saved).at(k)
            rs = [evaluate_policy(model, name, t, r, labels, s) for r, s in zip(recs, subsets)]
            table.setdefault(name, {})[str(k)] = {
                key: round(sum(r[key] for r in rs) / len(rs), 4) + 0.0 for key in ("accuracy", "drop_pp", "saving")
            }
    return table


__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_MAX_DROP_PP", "POLICIES"]
