import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from distree.policies.calibration import _Recorded, calibrate, drop_upper_bound, outcome


def _synthetic(n=2000, seed=0, noise=0.3, flips=0.0):
    """Three exits; a sample's score at an exit is high exactly when that exit is right,
    plus noise, so early exits are worth taking on confident samples. ``flips``: chance
    that an exit's correctness is flipped, so an early exit can be right where the last
    one is wrong (gains)."""
    g = torch.Generator().manual_seed(seed)
    difficulty = torch.rand(n, generator=g)
    correct = torch.stack([difficulty < 0.5, difficulty < 0.8, difficulty < 0.9])
    correct ^= torch.rand(3, n, generator=g) < flips
    scores = correct.float() + noise * torch.randn(3, n, generator=g)
    macs = torch.tensor([1.0, 2.0, 3.0])
    return scores, correct, macs


@pytest.mark.parametrize("drop", [0.0, 0.5, 2.0, 10.0])
def test_max_drop_constraint_holds_on_fit_set_without_confidence(drop):
    scores, correct, macs = _synthetic()
    cal = calibrate(scores, correct, macs, full_macs=3.0, max_drop_pp=drop, confidence=None)
    assert cal.met and cal.drop_bound_pp is None
    o = outcome(scores, correct, macs, cal.thresholds)
    full_acc = correct[-1].float().mean().item()
    assert (full_acc - o.accuracy) * 100 <= drop + 1e-9
    assert o.macs_per_sample == pytest.approx(cal.macs_per_sample)
    if drop >= 10.0:
        assert cal.saving > 0.2  # the search found real savings, not "never exit"


def test_a_cost_per_sample_is_each_samples_own_cost_at_its_exit():
    # Samples 0 and 2 stop at exit 0, samples 1 and 3 run to the last exit.
    scores = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    correct = torch.ones(3, 4, dtype=torch.bool)
    per_sample = torch.tensor([[1.0, 10.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0], [5.0, 5.0, 6.0, 100.0]])
    assert outcome(scores, correct, per_sample, [0.5, 0.5]).macs_per_sample == (1 + 5 + 2 + 100) / 4
    rec = _Recorded(scores, correct, per_sample).subset(np.array([1, 2]))
    assert rec.outcome([0.5, 0.5]).macs_per_sample == (5 + 2) / 2
    with pytest.raises(ValueError, match="do not match"):
        outcome(scores, correct, per_sample[:, :3], [0.0, 0.0])


def test_drop_upper_bound_is_clopper_pearson_and_shrinks_with_more_samples():
    # Each side is the exact (Clopper-Pearson) one-sided bound at (1 - confidence) / 2.
    ci = binomtest(20, 1000).proportion_ci(confidence_level=0.9, method="exact")  # two-sided 0.9 = 0.05 a side
    assert drop_upper_bound(20, 0, 1000, 0.9) == pytest.approx(ci.high)
    assert drop_upper_bound(1000, 10, 1000, 0.9) == pytest.approx(1 - ci_low(10, 1000))
    # No loss and no gain in n samples: 1 - (a/2)^(1/n).
    assert drop_upper_bound(0, 0, 100, 0.9) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert drop_upper_bound(20, 10, 1000, 0.9) < drop_upper_bound(20, 0, 1000, 0.9)
    assert drop_upper_bound(20, 10, 1000, 0.9) > 10 / 1000
    assert drop_upper_bound(200, 100, 10_000, 0.9) < drop_upper_bound(20, 10, 1000, 0.9)
    assert drop_upper_bound(1000, 0, 1000, 0.9) == 1.0


def ci_low(k, n):
    return binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact").low


def test_drop_upper_bound_covers_the_true_drop():
    """Draws at a true drop of exactly 1 point (losses 3%, gains 2%): the bound falls below
    it in at most 1 - confidence of them, at 90% and at 50% confidence."""
    rng = np.random.default_rng(0)
    n, trials = 2000, 4000
    counts = rng.multinomial(n, [0.03, 0.02, 0.95], size=trials)
    for confidence in (0.9, 0.5):
        below = sum(drop_upper_bound(int(l_), int(g), n, confidence) < 0.01 for l_, g, _ in counts)
        assert below / trials <= 1 - confidence, (confidence, below)
    # A bound with no margin (the observed drop) falls below the truth about half the time.
    assert 0.4 < float(np.mean((counts[:, 0] - counts[:, 1]) / n < 0.01)) < 0.6


def _population_drop(thresholds, pop):
    scores, correct, macs = pop
    o = outcome(scores, correct, macs, thresholds)
    return (correct[-1].float().mean().item() - o.accuracy) * 100


@pytest.mark.slow  # many random splits
def test_confidence_bounds_the_drop_on_new_data():
    """Calibrated on many independent draws, the drop on the population exceeds the target
    in at most about 1 - confidence of them; fitted with no margin, in most of them."""
    pop = _synthetic(200_000, seed=99, noise=0.6, flips=0.03)
    over = {0.9: 0, None: 0}
    for trial in range(10):
        scores, correct, macs = _synthetic(1500, seed=trial, noise=0.6, flips=0.03)
        for conf in over:
            cal = calibrate(scores, correct, macs, full_macs=3.0, max_drop_pp=1.0, confidence=conf)
            over[conf] += _population_drop(cal.thresholds, pop) > 1.0
            if conf:
                assert cal.met and cal.held_out == 1000 and cal.drop_bound_pp <= 1.0  # negative when gains dominate
                assert "90% confidence" in cal.message
    assert over[0.9] <= 2 and over[None] >= 6, over


def test_few_samples_leave_full_execution_which_always_meets_a_drop_target():
    scores, correct, macs = _synthetic(40)
    cal = calibrate(scores, correct, macs, full_macs=3.0, max_drop_pp=0.5, confidence=0.99)
    assert cal.met and cal.thresholds == [float("inf")] * 2 and cal.drop_bound_pp == 0
    assert "full execution only" in cal.message


def test_the_path_ignores_the_held_out_labels():
    """The order of the tests comes from the fitting third: flipping every held-out label
    changes which setting passes, never which settings are tested."""
    from distree.policies.calibration import FIT_SHARE, _Recorded, calibration_path

    scores, correct, macs = _synthetic(900, flips=0.05)
    order = np.random.default_rng(0).permutation(900)
    fit = np.sort(order[: round(900 * FIT_SHARE)])
    flipped = correct.clone()
    held = np.setdiff1d(np.arange(900), fit)
    flipped[:, held] = ~flipped[:, held]
    paths = [calibration_path(_Recorded(scores, c, macs).subset(fit), 3.0) for c in (correct, flipped)]
    assert paths[0] == paths[1] and len(paths[0]) > 5


def test_looser_target_never_costs_more():
    scores, correct, macs = _synthetic()
    costs = [calibrate(scores, correct, macs, 3.0, max_drop_pp=d).macs_per_sample for d in (0, 1, 5, 20)]
    assert costs == sorted(costs, reverse=True)


def test_budget_constraint_holds_and_impossible_budget_is_reported():
    scores, correct, macs = _synthetic()
    cal = calibrate(scores, correct, macs, full_macs=3.0, budget=0.6)
    assert cal.met and cal.macs_per_sample <= 0.6 * 3.0 + 1e-9
    cheap = calibrate(scores, correct, macs, full_macs=3.0, budget=0.9)
    assert cheap.accuracy >= cal.accuracy
    impossible = calibrate(scores, correct, macs, full_macs=3.0, budget=0.2)
    assert not impossible.met and "cannot be met" in impossible.message


def test_target_arguments_are_checked():
    scores, correct, macs = _synthetic(50)
    with pytest.raises(ValueError, match="exactly one"):
        calibrate(scores, correct, macs, 3.0)
    with pytest.raises(ValueError, match="budget"):
        calibrate(scores, correct, macs, 3.0, budget=1.5)


def test_many_exits_use_coordinate_descent_and_hold_the_constraint():
    g = torch.Generator().manual_seed(1)
    n, exits = 1500, 6
    difficulty = torch.rand(n, generator=g)
    correct = torch.stack([difficulty < 0.4 + 0.1 * e for e in range(exits)])
    scores = correct.float() + 0.3 * torch.randn(exits, n, generator=g)
    macs = torch.arange(1, exits + 1, dtype=torch.float32)
    cal = calibrate(scores, correct, macs, full_macs=float(exits), max_drop_pp=1.0, confidence=None)
    assert cal.met and cal.drop_pp <= 1.0 + 1e-9 and cal.saving > 0.1
    assert len(cal.thresholds) == exits - 1


def test_auroc_ranks_right_above_wrong_and_counts_ties_half():
    from distree.evaluation.measures import auroc

    right = torch.tensor([True, True, False, False])
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2]), right) == 1.0
    assert auroc(torch.tensor([0.1, 0.2, 0.9, 0.8]), right) == 0.0
    assert auroc(torch.full((4,), float("-inf")), right) == 0.5
    assert auroc(torch.tensor([0.9, 0.5, 0.5, 0.1]), right) == 0.875  # one tie of four pairs
    assert auroc(torch.rand(3), torch.tensor([True, True, True])) is None


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("NaN", "policies.max-prob.thresholds: .*got nan"),
        ("-Infinity", "policies.max-prob.thresholds: .*got -inf"),
        (None, "not valid JSON"),
    ],
    ids=["nan", "minus-infinity", "broken-json"],
)
def test_a_damaged_calibration_file_is_refused_naming_the_file_and_field(tmp_path, text, said):
    import json
    from pathlib import Path

    from distree.config import ConfigError
    from distree.policies.calibration_file import read_calibration_file

    shipped = Path(__file__).parents[2] / "models" / "fashion-mnist" / "calibration.json"
    path = tmp_path / "calibration.json"
    if text is None:
        path.write_text(shipped.read_text()[:100])
    else:
        raw = json.loads(shipped.read_text())
        raw["policies"]["max-prob"]["thresholds"][0] = float(text)
        path.write_text(json.dumps(raw))  # Python writes NaN and -Infinity as such
        assert text in path.read_text()
    with pytest.raises(ConfigError, match=said) as err:
        read_calibration_file(path)
    assert str(path) in str(err.value)
    read_calibration_file(shipped)  # the shipped file itself is fine
