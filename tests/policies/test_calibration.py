import pytest
import torch

from distree.policies.calibration import calibrate, outcome


def _synthetic(n=2000, seed=0):
    """Three exits; a sample's score at an exit is high exactly when that exit is right,
    plus noise, so early exits are worth taking on confident samples."""
    g = torch.Generator().manual_seed(seed)
    difficulty = torch.rand(n, generator=g)
    correct = torch.stack([difficulty < 0.5, difficulty < 0.8, difficulty < 0.9])
    scores = correct.float() + 0.3 * torch.randn(3, n, generator=g)
    macs = torch.tensor([1.0, 2.0, 3.0])
    return scores, correct, macs


@pytest.mark.parametrize("drop", [0.0, 0.5, 2.0, 10.0])
@pytest.mark.parametrize("z", [0.0, 1.0])
def test_max_drop_constraint_holds_on_fit_set(drop, z):
    scores, correct, macs = _synthetic()
    cal = calibrate(scores, correct, macs, full_macs=3.0, max_drop_pp=drop, z=z)
    assert cal.met
    o = outcome(scores, correct, macs, cal.thresholds)
    full_acc = correct[-1].float().mean().item()
    assert (full_acc - o.accuracy) * 100 + z * o.drop_se_pp <= drop + 1e-9
    if z:
        assert o.drop_se_pp > 0 or o.accuracy == pytest.approx(full_acc)
        loose = calibrate(scores, correct, macs, full_macs=3.0, max_drop_pp=drop, z=0.0)
        assert loose.macs_per_sample <= cal.macs_per_sample
    assert o.macs_per_sample == pytest.approx(cal.macs_per_sample)
    if drop >= 10.0:
        assert cal.saving > 0.2  # the search found real savings, not "never exit"


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
    cal = calibrate(scores, correct, macs, full_macs=float(exits), max_drop_pp=1.0, z=0.0)
    assert cal.met and cal.drop_pp <= 1.0 + 1e-9 and cal.saving > 0.1
    assert len(cal.thresholds) == exits - 1
