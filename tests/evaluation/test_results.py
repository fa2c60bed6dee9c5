"""eval.json as typed records, and the tables both `distree eval` and the README print."""

import json

import pytest
from pydantic import ValidationError

from distree.evaluation.results import EvalResult, by_present_table, labelled, policies_table, targets_table
from distree.tables import render


def _policy(accuracy, saving, calibrated=True):
    p = {
        "accuracy": accuracy,
        "drop_pp": round((0.9 - accuracy) * 100, 2),
        "macs_per_sample": int(1e6 * (1 - saving)),
        "saving": saving,
        "saving_by_exit": [saving, 0.0],
        "exit_histogram": [3, 7],
        "auroc": [None],
    }
    if calibrated:
        cal = {"thresholds": [None], "accuracy": accuracy, "drop_pp": 0.1, "macs_per_sample": 9e5, "saving": saving}
        cal |= {"drop_bound_pp": None, "confidence": None, "held_out": None}
        p["calibration"] = {
            **cal,
            "met": False,
            "message": "m",
            "by_present": {"1": {**cal, "met": True, "message": "m"}},
        }
        at = {"drop_pp": 0.1, "saving": saving, "saving_by_exit": [saving, 0.0], "bound_pp": 0.4, "met": True}
        p["at_targets"] = {"0.5": at, "1.0": at}
    return p


def _eval_json() -> dict:
    m = {"accuracy": 0.9, "macs_per_sample": 1000000}
    present = {"accuracy": 0.9, "drop_pp": 0.0, "saving": 0.0}
    return {
        "run": "models/x",
        "test_samples": 10,
        "macs_note": "FLOPs / 2",
        "teacher": m,
        "exits": [{"accuracy": 0.8, "macs_per_sample": 500000}, m],
        "full": m,
        "devices_present": {"1": 0.85, "2": 0.9},
        "devices_present_subsets": {"1": {"0": 0.84, "1": 0.86}, "2": {"0,1": 0.9}},
        "stage_macs": [[1, 2], [1, 2]],
        "head_macs": [3, 4],
        "backend": "torch",
        "target": {"max_drop_pp": 0.5, "budget": None, "confidence": 0.9},
        "calibration_saved": True,
        "policies": {"max-prob": _policy(0.89, 0.3), "full": _policy(0.9, 0.0, calibrated=False)},
        "branches_present": {"max-prob": {"2": present, "1": present}, "full": {"2": present, "1": present}},
        "curves": None,
    }


def test_eval_json_round_trips_key_for_key():
    d = _eval_json()
    r = EvalResult.model_validate_json(json.dumps(d))
    out = r.model_dump(mode="json")
    assert out == d and list(out) == list(d)  # same values, top-level keys in eval.json's order
    assert "calibration" not in r.model_dump(mode="json")["policies"]["full"]  # absent, not null
    assert r.policies["max-prob"].calibration.by_present[1].met
    schedules = {
        "depth": {
            "policy": "max-prob",
            "schedule": "0:2 1:2",
            "thresholds": [0.9],
            "validation_saving": 0.3,
            "accuracy": 0.89,
        }
        | {"drop_pp": 0.1, "saving": 0.3, "answered_by_devices": {"1": 0.0, "2": 1.0}, "device_busy": [0.7, 0.7]},
    }
    with_schedules = {**d, "depth_and_devices": schedules}
    assert EvalResult.model_validate_json(json.dumps(with_schedules)).model_dump(mode="json") == with_schedules


@pytest.mark.parametrize("drop", ["teacher", "calibration_saved"])
def test_a_missing_field_is_named(drop):
    d = _eval_json()
    del d[drop]
    with pytest.raises(ValidationError, match=drop):
        EvalResult.model_validate(d)


def test_policy_table_shows_auroc_and_met_only_where_they_mean_something():
    r = EvalResult.model_validate(_eval_json())
    headers, rows = policies_table(r)
    by_name = {row[0]: dict(zip(headers, row)) for row in rows}
    assert by_name["max-prob"]["AUROC per exit"] == "-"  # calibrated, every exit-0 prediction right or wrong
    assert by_name["max-prob"]["target met"] == "no"
    assert by_name["max-prob"]["criterion"] == "softmax confidence"
    assert by_name["full"]["AUROC per exit"] == "" and by_name["full"]["target met"] == ""
    assert by_name["max-prob"]["saving"] == "30.0%"
    assert [row[0] for row in targets_table(r)[1]] == ["max-prob"]  # only calibrated policies
    assert by_present_table(r)[0] == ["policy", "2 present: drop / saving", "1 present: drop / saving"]


def test_several_runs_share_a_table_with_a_data_set_column():
    r = EvalResult.model_validate(_eval_json())
    headers, rows = labelled({"A": policies_table(r), "B": policies_table(r)})
    assert headers[:2] == ["data set", "policy"]
    assert [row[:2] for row in rows] == [["A", "max-prob"], ["A", "full"], ["B", "max-prob"], ["B", "full"]]


def test_render_aligns_words_left_and_values_right_in_text_and_markdown():
    headers, rows = ["name", "kind", "value"], [["a", "word", "1.0"], ["bbb", "x", "22.5"]]
    assert render(headers, rows) == ["name  kind  value", "a     word    1.0", "bbb   x      22.5"]
    md = render(headers, rows, markdown=True)
    assert md[1] == "|---|---|---:|"
    assert md[2] == "| a | word | 1.0 |"
