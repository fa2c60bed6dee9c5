import json
import math

import pytest
import torch
from conftest import calibration_of, tiny_student_config

from distree.evaluation.measures import branches_present_table, calibrate_policies
from distree.inference.records import exit_costs, fuse_exits, fuse_random_subsets
from distree.models import DistrEEStudent
from distree.policies import decide_exits, exit_scores, make_policy
from distree.policies.calibration_file import CalibrationTarget, thresholds_for
from distree.run import RunDir

SHAPE = {"branches": 3, "exits": 3}


def test_thresholds_are_read_for_every_number_of_branches_present():
    saved = calibration_of({"max-prob": {3: [0.9, None], 1: [0.5, 0.6], 2: [None, 0.7]}})
    t = thresholds_for(make_policy("max-prob"), saved, **SHAPE)
    assert t.at(3) == [0.9, math.inf] and t.at(2) == [math.inf, 0.7] and t.at(1) == [0.5, 0.6]
    with pytest.raises(ValueError, match="no thresholds for 4 branches"):
        t.at(4)
    assert thresholds_for(make_policy("full"), None, **SHAPE).at(1) == [math.inf, math.inf]
    assert thresholds_for(make_policy("oracle"), None, **SHAPE).at(3) == [0.0, 0.0]


def test_a_calibration_without_every_count_asks_to_calibrate_again():
    with pytest.raises(ValueError, match=r"\[2, 3\] branches present.*distree calibrate"):
        thresholds_for(make_policy("max-prob"), calibration_of({"max-prob": {3: [0.9, None], 2: [0.5, 0.6]}}), **SHAPE)
    with pytest.raises(ValueError, match="not calibrated"):
        thresholds_for(make_policy("entropy"), calibration_of({"max-prob": {3: [0.9, None]}}), **SHAPE)
    with pytest.raises(ValueError, match="has 1 thresholds for a model with 3 exits"):
        thresholds_for(make_policy("max-prob"), calibration_of({"max-prob": {3: [0.9], 2: [0.1], 1: [0.2]}}), **SHAPE)


def test_calibration_json_round_trips_and_a_bad_field_is_named(tmp_path):
    run = RunDir(tmp_path)
    saved = calibration_of({"max-prob": {2: [0.9, None], 1: [0.5, 0.6]}})
    run.write_calibration(saved)
    assert run.read_calibration() == saved
    run.calibration_file.write_text(run.calibration_file.read_text().replace('"split"', '"splt"'))
    with pytest.raises(ValueError, match="splt"):
        run.read_calibration()


def test_random_subsets_fuse_each_sample_with_its_own_branches():
    torch.manual_seed(0)
    model = DistrEEStudent(tiny_student_config(branches=3), 3, 4, 8).eval()
    vectors = [[torch.randn(50, d) for d in br.out_dims] for br in model.branches]
    rec, subsets, which = fuse_random_subsets(model, vectors, present=2, seed=1)
    assert subsets == [(0, 1), (0, 2), (1, 2)] and set(which.tolist()) == {0, 1, 2}
    for i, s in enumerate(subsets):
        alone = fuse_exits(model, vectors, s)
        rows = which == i
        for got, want in zip(rec, alone):
            torch.testing.assert_close(got[:, rows], want[:, rows])


def _uneven_student():
    """Two branches of different widths: each subset of branches has its own cost."""
    torch.manual_seed(0)
    cfg = tiny_student_config(branches=2)
    wide = cfg.branches[1].model_copy(update={"width": 0.5})
    cfg = cfg.model_copy(update={"branches": [cfg.branches[0], wide]})
    model = DistrEEStudent(cfg, 3, 4, 8).eval()
    vectors = [[torch.randn(300, d) for d in br.out_dims] for br in model.branches]
    return model, vectors, torch.randint(0, 4, (300,))


def test_each_count_is_calibrated_with_each_samples_own_branches_and_cost():
    model, vectors, labels = _uneven_student()
    cal = calibrate_policies(model, vectors, labels, CalibrationTarget(budget=0.8), ["max-prob"])
    one = cal.policies["max-prob"].by_present[1]
    rec, subsets, which = fuse_random_subsets(model, vectors, 1)
    exits = decide_exits(exit_scores(make_policy("max-prob"), rec), one.thresholds)
    own = [subsets[int(w)] for w in which]
    costs = [float(model.macs.exit_cumulative(int(e), s)) for e, s in zip(exits, own)]
    full = sum(float(model.macs.full(s)) for s in own) / len(own)
    assert one.macs_per_sample == pytest.approx(sum(costs) / len(costs))
    assert one.saving == pytest.approx(1 - sum(costs) / len(costs) / full)
    right = rec.logits[exits, torch.arange(len(exits))].argmax(-1) == labels
    assert one.accuracy == pytest.approx(float(right.float().mean()))


def test_the_branches_present_table_uses_the_thresholds_for_each_count():
    model, vectors, labels = _uneven_student()
    # Two branches: never stop early. One branch: always stop at the first exit.
    saved = calibration_of({"max-prob": {2: [None, None], 1: [0.0, 0.0]}})
    table = branches_present_table(model, vectors, labels, saved, ["max-prob"])["max-prob"]
    assert table["2"].saving <= 0 < table["1"].saving


def test_full_execution_is_charged_the_head_of_the_exit_it_stops_at_only():
    model, _, _ = _uneven_student()
    macs = model.macs
    full = exit_costs(model, "full", present=[1])
    assert full[-1] == macs.full([1])
    assert full.tolist() == [float(macs.stages_until(e, [1]) + macs.head[e]) for e in range(model.num_exits)]
    assert exit_costs(model, "max-prob")[-1] == macs.full() + sum(macs.head[:-1])


def _with_schedule(label, thresholds):
    saved = calibration_of({"max-prob": {3: [0.9, None], 2: [0.5, 0.6], 1: [0.4, 0.5]}})
    entry = saved.policies["max-prob"].model_dump()
    over = {**{k: v for k, v in entry.items() if k != "by_present"}, "schedule": label, "thresholds": thresholds}
    raw = saved.model_dump(mode="json")
    raw["policies"]["max-prob"]["depth_and_devices"] = over
    return raw


def test_a_schedule_in_calibration_json_reaches_the_thresholds_and_a_bad_one_is_named(tmp_path):
    run = RunDir(tmp_path)
    run.calibration_file.write_text(json.dumps(_with_schedule("0:1 1:1 1:3 2:3", [0.8, None, 0.7])))
    saved = run.read_calibration()
    t = thresholds_for(make_policy("max-prob"), saved, **SHAPE)
    assert t.schedule.label == "0:1 1:1 1:3 2:3" and t.per_step == [0.8, math.inf, 0.7]
    assert t.at(3) == [0.9, math.inf]  # the depth-only settings stay, for groups with a device down
    assert t.depth_only().schedule is None and t.depth_only().at(2) == [0.5, 0.6]
    run.write_calibration(saved)  # round trip, and no entry for a depth-only choice
    assert run.read_calibration() == saved
    assert "depth_and_devices" not in json.dumps(calibration_of({"max-prob": {3: [0.9, None]}}).model_dump())
    for label, thresholds, problem in [
        ("0:1 1:x", [0.8], "EXIT:AWAKE"),
        ("0:1 1:1 1:3 2:3", [0.8], "needs 3 thresholds, got 1"),
        ("1:1 0:3 2:3", [0.8, 0.7], "never back"),
    ]:
        run.calibration_file.write_text(json.dumps(_with_schedule(label, thresholds)))
        with pytest.raises(ValueError, match=problem) as err:
            run.read_calibration()
        assert "depth_and_devices" in str(err.value) and str(run.calibration_file) in str(err.value)
    # A schedule that does not fit the model: named when the thresholds are asked for.
    run.calibration_file.write_text(json.dumps(_with_schedule("0:1 1:1 2:2", [0.8, 0.7])))
    with pytest.raises(ValueError, match=r"must end at the last exit with every device.*distree calibrate"):
        thresholds_for(make_policy("max-prob"), run.read_calibration(), **SHAPE)
