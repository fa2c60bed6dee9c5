import json

import pytest
from conftest import tiny_run_config

from distree.cli.main import main
from distree.config import dump_json
from distree.policies import policy_names


@pytest.mark.slow  # a whole run trained, then evaluated
def test_quickstart_trains_then_evaluates_writing_every_field(tmp_path, image_folder, capsys):
    """``quickstart`` is ``train`` then ``eval``, each through the command line's one dispatch path."""
    cfg = tmp_path / "cfg.json"
    dump_json(tiny_run_config(epochs=2), cfg)
    run, out = tmp_path / "run", tmp_path / "eval.json"
    argv = ["quickstart", "--data", str(image_folder), "--out", str(run), "--config", str(cfg), "--limit", "30"]
    assert main([*argv, "--json", str(out)]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["data"]["train_samples"] == 30 and meta["config"]["teacher_optim"]["epochs"] == 1
    assert meta["provenance"]["command"][:2] == ["distree", "train"]  # each step records its own command
    printed = capsys.readouterr().out
    assert "teacher" in printed and "exit 0" in printed and "1 of 2" in printed
    r = json.loads(out.read_text())
    assert 0 <= r["teacher"]["accuracy"] <= 1 and r["teacher"]["macs_per_sample"] > 0
    assert len(r["exits"]) == 3
    macs = [e["macs_per_sample"] for e in r["exits"]]
    assert macs == sorted(macs)
    assert r["full"]["accuracy"] == r["exits"][-1]["accuracy"]
    assert r["full"]["macs_per_sample"] <= macs[-1]
    assert set(r["devices_present"]) == {"1", "2"}
    assert r["test_samples"] == 30
    # Policies at their calibrated point (calibrated on the fly at 0.5 points), curves, k of N.
    assert r["target"] == {"max_drop_pp": 0.5, "budget": None, "confidence": 0.9}
    assert not r["calibration_saved"] and "not saved: run distree calibrate" in printed
    # Nothing is written into the run unasked: the curves go beside the JSON.
    assert sorted(f.name for f in run.iterdir()) == [
        "metrics.jsonl",
        "run.json",
        "student.safetensors",
        "teacher.safetensors",
    ]
    assert set(r["policies"]) == set(policy_names())  # every policy, calibrated or not
    for name, p in r["policies"].items():
        assert {"accuracy", "drop_pp", "macs_per_sample", "saving", "exit_histogram", "auroc"} <= set(p)
        assert sum(p["exit_histogram"]) == 30
        assert len(p["auroc"]) == 2 and all(a is None or 0 <= a <= 1 for a in p["auroc"])
        assert sum(p["saving_by_exit"]) == pytest.approx(p["saving"], abs=1e-3)
        if name not in ("full", "oracle"):
            assert set(p["at_targets"]) == {"0.5", "1.0", "2.0"}
    assert r["policies"]["full"]["saving"] == 0 and r["policies"]["full"]["drop_pp"] == 0
    assert r["policies"]["oracle"]["accuracy"] >= max(e["accuracy"] for e in r["exits"])
    assert (tmp_path / "policy_curves.png").stat().st_size > 0
    assert "feature-diff" in (tmp_path / "policy_curves.csv").read_text()
    assert set(r["branches_present"]["feature-diff"]) == {"1", "2"}
    assert set(r["branches_present"]["full"]["1"]) == {"accuracy", "drop_pp", "saving"}
    # Thresholds for every number of branches present: all of them at the top, fewer below.
    assert main(["calibrate", str(run), "--data", str(image_folder), "--max-drop", "0.5"]) in (0, 1)
    saved = json.loads((run / "calibration.json").read_text())
    assert set(saved["policies"]["max-prob"]["by_present"]) == {"1"}
    assert len(saved["policies"]["max-prob"]["by_present"]["1"]["thresholds"]) == 2

    # Calibrating for a budget below the cheapest exit is reported as not met (exit status 1).
    code = main(["calibrate", str(run), "--data", str(image_folder), "--budget", "0.01", "--policy", "max-prob"])
    assert code == 1 and "NOT MET" in capsys.readouterr().out
    # 12 validation samples cannot bound an early exit's drop at 90% confidence: full execution it is.
    assert main(["calibrate", str(run), "--data", str(image_folder), "--max-drop", "1"]) == 0
    assert "full execution only" in capsys.readouterr().out
    assert main(["calibrate", str(run), "--data", str(image_folder), "--max-drop", "1", "--confidence", "0"]) == 0
    assert main(["calibrate", str(run), "--data", str(image_folder), "--max-drop", "1", "--confidence", "1"]) == 2


def test_train_time_limit_exits_3_and_says_how_to_continue(tmp_path, image_folder, capsys):
    cfg = tmp_path / "cfg.json"
    dump_json(tiny_run_config(epochs=1), cfg)
    argv = ["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--config", str(cfg)]
    assert main([*argv, "--time-limit", "0.000001"]) == 3
    assert "Run the same command again to continue" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # refused by the parser, before anything runs
        main([*argv, "--time-limit", "-1"])
    assert stop.value.code == 2 and "--time-limit: must be above 0" in capsys.readouterr().err
    assert main([*argv, "--time-limit", "60"]) == 0
    made = json.loads((tmp_path / "run" / "run.json").read_text())["provenance"]
    assert made["command"] == ["distree", *argv, "--time-limit", "0.000001"]  # the command that created it


def test_train_sizes_an_unset_config_and_warns_of_a_short_schedule(tmp_path, image_folder, capsys):
    # The time limit stops it at the first step: what matters is said before training starts.
    argv = ["train", "--data", str(image_folder), "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*argv, "--time-limit", "0.000001"]) == 3
    err = capsys.readouterr().err
    assert "sized for the data set" in err and "teacher WRN-16-2" in err
    assert "warning: teacher: 2 optimizer steps (1 epoch of 2 batches of 32) are too few to learn from" in err


def test_bad_config_names_the_field(tmp_path, image_folder, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: {embed_dim: 0}\n")
    assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert "student.embed_dim" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "data path not found" in err and "none" in err


def test_eval_of_a_non_run(tmp_path, image_folder, capsys):
    assert main(["eval", str(tmp_path), "--data", str(image_folder)]) == 2
    assert "not a distree run directory" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "train" in capsys.readouterr().out


def test_flags_are_validated_as_the_config_file_is(tmp_path, image_folder, capsys):
    for epochs in ("0", "-1"):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--data", str(image_folder), "--out", str(tmp_path / "r"), "--epochs", epochs])
        assert stop.value.code == 2 and "--epochs: must be at least 1" in capsys.readouterr().err
    cfg = tmp_path / "inf.yaml"
    cfg.write_text("teacher_optim: {lr: .inf}\n")
    assert main(["train", "--data", str(image_folder), "--out", str(tmp_path / "r"), "--config", str(cfg)]) == 2
    assert "lr" in capsys.readouterr().err


def test_policies_lists_every_policy_with_its_criterion_and_the_default(capsys):
    from distree.config import DEFAULT_POLICY
    from distree.policies import policy_class

    assert main(["policies"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) == set(policy_names())
    assert all(policy_class(n).criterion in line for n, line in lines.items())
    assert lines[DEFAULT_POLICY].rstrip().endswith("default")
    assert "offline only" in lines["oracle"]


def test_weights_that_cannot_be_read_stop_a_worker_before_it_listens(tmp_path, capsys):
    import shutil
    from pathlib import Path

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parents[2] / "models" / "fashion-mnist", run)
    weights = run / "student.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["worker", str(run), "--branch", "0", "--listen", "127.0.0.1:0"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "cannot read the weights in" in err[0] and str(weights) in err[0], err
    assert "listening" not in captured.out + captured.err
