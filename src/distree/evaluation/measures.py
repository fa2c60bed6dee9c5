"""What evaluation measures on recorded exit outputs (``ExitRecords``): accuracy, each
policy's accuracy, drop, computation and saving at given thresholds, its curve over
thresholds, its calibration on validation, AUROC, and the tables with k of N branches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from distree.evaluation.results import AtTarget, PresentResult
from distree.inference.costs import ExitCosts
from distree.inference.records import (
    exit_costs,
    fuse_awake,
    fuse_exits,
    fuse_random_subsets,
    fuse_schedule,
    schedule_costs,
)
from distree.models import DistrEEStudent, ExitRecords
from distree.policies import exit_scores, make_policy, policy_class
from distree.policies.base import first_passing
from distree.policies.calibration import (
    DEFAULT_CONFIDENCE,
    Calibration,
    calibrate,
    calibrate_choice,
    calibrate_targets,
    candidate_thresholds,
    outcome,
    quantile_family,
)
from distree.policies.calibration_file import (
    CalibrationFile,
    CalibrationTarget,
    PolicyCalibration,
    ScheduleCalibration,
    model_thresholds,
)
from distree.policies.schedule import Schedule, Step, candidate_schedules

DEFAULT_MAX_DROP_PP = 0.5


def calibrate_policies(
    model: DistrEEStudent,
    vectors: list[list[torch.Tensor]],
    val_labels: torch.Tensor,
    target: CalibrationTarget,
    policies: Sequence[str],
) -> CalibrationFile:
    """Fit every calibrated policy in ``policies`` on the validation split's branch vectors.

    Each policy gets a setting with every branch present and, under ``by_present``, one per
    smaller count k, fitted on the validation samples each fused with a random k-subset
    of the branches. The target is relative to full execution with the same branches, so
    it holds on average over which devices are missing.

    With a drop target held at a confidence and more than one branch, each policy also
    chooses a schedule over depth and devices (``depth_and_devices``, kept only when it is
    not the depth-only one).
    """
    everything = fuse_exits(model, vectors)
    mixtures = {k: fuse_random_subsets(model, vectors, k) for k in range(1, model.num_branches)}
    over_devices = (
        model.num_branches > 1
        and target.max_drop_pp is not None
        and target.budget is None
        and target.confidence is not None
    )
    if over_devices:
        schedules = list(candidate_schedules(model.num_exits, model.num_branches))
        steps = schedule_records(model, vectors, schedules)
    fitted = {}
    for name in policies:
        if not make_policy(name, val_labels).calibrated:
            continue
        entry = _calibrate_on(model, name, everything, val_labels, None, None, target)
        by_present = {
            k: _calibrate_on(model, name, rec, val_labels, subsets, which, target)
            for k, (rec, subsets, which) in mixtures.items()
        }
        chosen = None
        if over_devices:
            c, cal = choose_schedule(model, name, schedules, steps, val_labels, target.max_drop_pp, target.confidence)
            if c:
                chosen = ScheduleCalibration(schedule=schedules[c].label, **dict(cal))
        fitted[name] = PolicyCalibration(**dict(entry), by_present=by_present, depth_and_devices=chosen)
    return CalibrationFile(target=target, split="validation", samples=int(val_labels.numel()), policies=fitted)


def in_turn(samples: int, model: DistrEEStudent) -> torch.Tensor:
    """The branch each of ``samples`` inputs starts on when they take the branches in turn
    (input i on branch i mod N), as the runtime's groups do."""
    return torch.arange(samples) % model.num_branches


def schedule_records(
    model: DistrEEStudent, vectors: list[list[torch.Tensor]], schedules: Sequence[Schedule]
) -> list[ExitRecords]:
    """Each schedule's step records (``fuse_schedule``), inputs starting on the branches in
    turn."""
    starts = in_turn(vectors[0][0].shape[0], model)
    return [fuse_schedule(model, vectors, s, starts) for s in schedules]


def _scored(model: DistrEEStudent, policy: str, schedule: Schedule, rec: ExitRecords, labels: torch.Tensor):
    scores, correct = scores_and_correct(policy, rec, labels)
    return scores, correct, schedule_costs(model, policy, schedule, in_turn(labels.shape[0], model))


def choose_schedule(
    model: DistrEEStudent,
    policy: str,
    schedules: Sequence[Schedule],
    records: Sequence[ExitRecords],
    labels: torch.Tensor,
    max_drop_pp: float,
    confidence: float,
) -> tuple[int, Calibration]:
    """``calibrate_choice`` among ``schedules`` (the first is the depth-only one) on their
    step records: the chosen index and its calibration."""
    candidates = [_scored(model, policy, s, rec, labels) for s, rec in zip(schedules, records)]
    return calibrate_choice(candidates, float(model.macs.full()), max_drop_pp, confidence)


def _calibrate_on(
    model: DistrEEStudent,
    name: str,
    rec: ExitRecords,
    labels: torch.Tensor,
    subsets: list[tuple[int, ...]] | None,
    which: torch.Tensor | None,
    target: CalibrationTarget,
) -> Calibration:
    """``calibrate`` on records fused with every branch (``subsets`` None) or with the
    subset ``subsets[which[i]]`` for sample i, each sample costed with its own branches."""
    scores, correct = scores_and_correct(name, rec, labels)
    if subsets is None:
        costs, full = exit_costs(model, name), float(model.macs.full())
    else:
        costs = torch.stack([exit_costs(model, name, s) for s in subsets], dim=1)[:, which]  # (E, N)
        full = float(torch.tensor([float(model.macs.full(s)) for s in subsets])[which].mean())
    return calibrate(scores, correct, costs, full, **target.model_dump())


REPORTED_TARGETS_PP = (0.5, 1.0, 2.0)


def at_targets(
    model: DistrEEStudent,
    policy: str,
    val: ExitRecords,
    val_labels: torch.Tensor,
    test: ExitRecords,
    test_labels: torch.Tensor,
    confidence: float | None = DEFAULT_CONFIDENCE,
) -> dict[str, AtTarget]:
    """Calibrated on validation for each drop target in ``REPORTED_TARGETS_PP``, measured
    on test, by target."""
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
        out[str(target)] = AtTarget(
            drop_pp=r["drop_pp"],
            saving=r["saving"],
            saving_by_exit=r["saving_by_exit"],
            bound_pp=None if cal.drop_bound_pp is None else round(cal.drop_bound_pp, 3),
            met=cal.met,
        )
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


def branches_present_table(
    model: DistrEEStudent,
    vectors: list[list[torch.Tensor]],
    labels: torch.Tensor,
    saved: CalibrationFile | None,
    policies: Sequence[str],
) -> dict[str, dict[str, PresentResult]]:
    """Per policy and per k: mean accuracy, drop (pp, against full execution with the same
    branches) and saving over all k-subsets of branches, each with its thresholds for k."""
    n = model.num_branches
    table: dict = {}
    for k in range(1, n + 1):
        subsets = list(combinations(range(n), k))
        recs = [fuse_exits(model, vectors, s) for s in subsets]
        for name in policies:
            t = model_thresholds(name, model, saved).at(k)
            rs = [evaluate_policy(model, name, t, r, labels, s) for r, s in zip(recs, subsets)]
            table.setdefault(name, {})[str(k)] = PresentResult(
                **{key: round(sum(r[key] for r in rs) / len(rs), 4) + 0.0 for key in ("accuracy", "drop_pp", "saving")}
            )
    return table


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float | list[float]:
    """Top-1 accuracy of (N, K) logits (a float), or of (E, N, K) logits (one per exit)."""
    return (logits.argmax(-1) == labels).float().mean(-1).tolist()


def scores_and_correct(policy: str, rec: ExitRecords, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, N) scores of ``policy`` and (E, N) correctness of each exit's prediction."""
    scores = exit_scores(make_policy(policy, labels), rec)
    return scores, rec.logits.argmax(-1) == labels


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


def sweep_policy(
    model: DistrEEStudent,
    policy: str,
    val: ExitRecords,
    val_labels: torch.Tensor,
    test: ExitRecords,
    test_labels: torch.Tensor,
) -> list[dict]:
    """Accuracy vs computation on test over thresholds taken from validation score quantiles."""
    fixed = policy_class(policy).fixed_threshold
    if fixed is not None:
        families = [[fixed] * (model.num_exits - 1)]
    else:
        vs, _ = scores_and_correct(policy, val, val_labels)
        families = quantile_family(candidate_thresholds(vs), steps=40)
    rows = []
    for i, t in enumerate(families):
        r = evaluate_policy(model, policy, t, test, test_labels)
        del r["exit_histogram"], r["saving_by_exit"]
        rows.append({"policy": policy, "step": i, **r})
    return rows


def device_schedules(
    model: DistrEEStudent,
    policy: str,
    val_vectors: list[list[torch.Tensor]],
    val_labels: torch.Tensor,
    test_vectors: list[list[torch.Tensor]],
    test_labels: torch.Tensor,
    max_drop_pp: float = DEFAULT_MAX_DROP_PP,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict:
    """``policy`` over depth only (every device for every input) and over depth and devices
    (a schedule chosen on validation with its thresholds, ``calibrate_choice``), each
    calibrated for ``max_drop_pp`` at ``confidence`` and measured on test: accuracy, drop,
    saving, the share of inputs answered with each number of devices awake, and each
    device's busy share (the MACs it ran over what it runs under full execution). Inputs
    start on the branches in turn (input i on branch i mod N)."""
    n = model.num_branches
    num_exits = model.num_exits
    schedules = list(candidate_schedules(num_exits, n))
    val = schedule_records(model, val_vectors, schedules)
    full_macs = float(model.macs.full())
    costs = ExitCosts(model.macs, make_policy(policy))
    per_device_full = [costs.device(b, Step(num_exits - 1, n), 0) for b in range(n)]
    out = {}
    for name, choices in (("depth", 1), ("depth-and-devices", len(schedules))):
        c, cal = choose_schedule(model, policy, schedules[:choices], val[:choices], val_labels, max_drop_pp, confidence)
        schedule = schedules[c]
        scores, correct, macs = _scored(
            model, policy, schedule, schedule_records(model, test_vectors, [schedule])[0], test_labels
        )
        stop = torch.from_numpy(first_passing(scores.double().numpy(), cal.thresholds))
        n_test = stop.shape[0]
        right = correct[stop, torch.arange(n_test)]
        spent = macs[stop, torch.arange(n_test)].double()
        starts = in_turn(n_test, model)
        awake = torch.tensor([s.awake for s in schedule.steps])[stop]
        # ran[b, i, s]: what device b has run for an input that starts on s and stops at step i
        ran = torch.tensor(
            [[[costs.device(b, step, s) for s in range(n)] for step in schedule.steps] for b in range(n)],
            dtype=torch.float64,
        )
        busy = [float(ran[b, stop, starts].sum()) / (per_device_full[b] * n_test) for b in range(n)]
        full_acc = float(correct[-1].float().mean())
        out[name] = {
            "policy": policy,
            "schedule": schedule.label,
            "thresholds": [round(t, 6) if math.isfinite(t) else None for t in cal.thresholds],
            "validation_saving": round(cal.saving, 4),
            "accuracy": round(float(right.float().mean()), 4),
            "drop_pp": round((full_acc - float(right.float().mean())) * 100, 2) + 0.0,
            "saving": round(1 - float(spent.mean()) / full_macs, 4),
            "answered_by_devices": {str(k): round(float((awake == k).float().mean()), 4) for k in range(1, n + 1)},
            "device_busy": [round(b, 4) for b in busy],
        }
    return out


def calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error of softmax confidence (Guo et al. 2017): the gap between
    accuracy and mean confidence in equal-width confidence bins, weighted by each bin's
    share of the (N, K) ``logits``."""
    conf, pred = logits.float().softmax(-1).max(-1)
    right = (pred == labels).float()
    which = torch.bucketize(conf, torch.linspace(0, 1, bins + 1)[1:-1])
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += float(inside.float().mean()) * abs(float(right[inside].mean() - conf[inside].mean()))
    return total


def awake_table(model: DistrEEStudent, vectors: list[list[torch.Tensor]], labels: torch.Tensor) -> dict:
    """For 1 to N devices awake (the first of each input's wake order, inputs starting on
    the devices in turn): every exit's accuracy and calibration error."""
    starts = in_turn(labels.shape[0], model)
    out = {}
    for m in range(1, model.num_branches + 1):
        rec = fuse_awake(model, vectors, m, starts)
        out[str(m)] = {
            "accuracy": [round(a, 4) for a in accuracy(rec.logits, labels)],
            "calibration_error": [round(calibration_error(lg, labels), 4) for lg in rec.logits],
        }
    return out
