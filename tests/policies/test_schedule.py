"""Schedules over depth and devices: their shape, their cost, their calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distree.exits import StudentMacs
from distree.inference.costs import ExitCosts
from distree.policies import make_policy
from distree.policies.calibration import calibrate_choice, calibrate_targets
from distree.policies.schedule import Schedule, Step, awake_branches, candidate_schedules, wake_order


def test_a_schedule_only_moves_on_and_must_end_with_full_execution():
    s = Schedule.parse("0:1 1:1 1:4 2:4")
    assert s.steps == (Step(0, 1), Step(1, 1), Step(1, 4), Step(2, 4)) and s.label == "0:1 1:1 1:4 2:4"
    s.check(num_exits=3, num_branches=4)
    with pytest.raises(ValueError, match="never back"):
        Schedule.parse("0:2 1:1 2:4")
    with pytest.raises(ValueError, match="never back"):
        Schedule.parse("0:4 0:4 2:4")
    with pytest.raises(ValueError, match="must end at the last exit with every device"):
        Schedule.parse("0:1 1:1").check(num_exits=2, num_branches=4)
    with pytest.raises(ValueError, match="goes past"):
        Schedule.parse("0:1 3:4").check(num_exits=3, num_branches=4)
    with pytest.raises(ValueError, match="EXIT:AWAKE"):
        Schedule.parse("0-1")


def test_devices_wake_in_a_rotation_from_the_input_s_start():
    assert wake_order(2, 4) == (2, 3, 0, 1)
    assert awake_branches(Step(0, 2), start=3, num_branches=4) == (0, 3)
    schedules = list(candidate_schedules(num_exits=3, num_branches=4))
    assert schedules[0] == Schedule.depth_only(3, 4)
    assert len(schedules) == 1 + 3 * 2 * 2  # first 1..3 devices, switch after exit 0 or 1, decide again or not
    assert Schedule.parse("0:1 1:1 1:4 2:4") in schedules and Schedule.parse("0:2 1:4 2:4") in schedules
    for s in schedules:
        s.check(3, 4)


def test_a_step_costs_the_stages_its_awake_devices_caught_up_on_and_the_heads_read():
    # 3 branches whose stages cost 1, 10, 100 (branch 0), 2, 20, 200 (1), 4, 40, 400 (2); heads 1000 each.
    macs = StudentMacs([[1, 10, 100], [2, 20, 200], [4, 40, 400]], [1000, 1000, 1000])
    costs = ExitCosts(macs, make_policy("max-prob"))
    schedule = Schedule.parse("0:1 1:1 1:3 2:3")
    # Starting on branch 1: it alone to exit 1 (2 + 20), then branches 2 and 0 catch up to exit 1.
    expected = [2 + 1000, 22 + 2000, 22 + 44 + 11 + 3000, 222 + 444 + 111 + 4000]
    assert costs.per_step(schedule, start=1).tolist() == expected
    assert costs.device(0, Step(1, 1), start=1) == 0 and costs.device(0, Step(1, 3), start=1) == 11
    # The depth-only schedule costs what every exit does with all branches present.
    depth = Schedule.depth_only(3, 3)
    assert costs.per_step(depth, start=2).tolist() == costs.per_exit().tolist()


def _recorded(n: int, steps: int, seed: int, easy: float):
    """Scores, correctness and costs of a sequence of decision points: a sample is right at
    every step with probability ``easy`` (and always at the last), its score high when right."""
    rng = np.random.default_rng(seed)
    correct = rng.random((steps, n)) < easy
    correct[-1] = True
    scores = np.where(correct, rng.uniform(0.5, 1.0, (steps, n)), rng.uniform(0.0, 0.6, (steps, n)))
    costs = np.linspace(1.0, 10.0, steps)[:, None].repeat(n, 1)
    return torch.from_numpy(scores), torch.from_numpy(correct), torch.from_numpy(costs)


def test_choosing_among_candidates_is_depth_only_calibration_when_there_is_one():
    one = _recorded(3000, 4, seed=0, easy=0.9)
    c, cal = calibrate_choice([one], full_macs=10.0, max_drop_pp=0.5, confidence=0.9)
    (alone,) = calibrate_targets(*one, full_macs=10.0, targets_pp=[0.5], confidence=0.9)
    assert c == 0 and cal.thresholds == alone.thresholds and cal.saving == alone.saving


def test_the_cheaper_candidate_is_chosen_and_its_drop_is_bounded():
    worse = _recorded(3000, 4, seed=1, easy=0.5)
    better = _recorded(3000, 4, seed=2, easy=0.95)
    c, cal = calibrate_choice([worse, better], full_macs=10.0, max_drop_pp=0.5, confidence=0.9)
    assert c == 1 and cal.saving > 0.5 and cal.drop_bound_pp <= 0.5
    # With no drop allowed, no early stop can pass the test: full execution of the first.
    c, cal = calibrate_choice([worse, better], full_macs=10.0, max_drop_pp=0.0, confidence=0.9)
    assert c == 0 and cal.saving == 0.0 and "full execution only" in cal.message
    other_full = tuple(t.clone() for t in better)
    other_full[1][-1, :10] = False  # its last step is not the same full execution
    with pytest.raises(ValueError, match="same full execution"):
        calibrate_choice([worse, other_full], full_macs=10.0, max_drop_pp=0.5)
    with pytest.raises(ValueError, match="same samples"):
        calibrate_choice([worse, _recorded(100, 4, seed=4, easy=0.9)], full_macs=10.0, max_drop_pp=0.5)
