"""`distree demo` end to end with real processes on loopback (``e2e``), and `distree infer`
against servers in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import NOT_ON_A_COORDINATOR, RUNTIME_BRANCHES, missing_modules
from servers import ThreadCluster

from distree.cli.main import main
from distree.launch.demo import DEMO_POLICIES
from distree.launch.local import free_ports


def _data_dir(run) -> Path:
    return Path(run.path).parent / "data"  # where the `trained` fixture wrote its images


@pytest.mark.e2e
def test_demo_writes_every_coordinator_with_only_the_torch_extra(trained, tmp_path, capsys, monkeypatch):
    """The demo's workers, coordinators and load, its processes started with what
    ``distree[torch]`` installs and no more (no plots, SimPy or ONNX)."""
    run, _splits = trained
    monkeypatch.setenv("PYTHONPATH", str(missing_modules(tmp_path / "coordinator", NOT_ON_A_COORDINATOR)))
    out = tmp_path / "demo.json"
    assert (
        main(["demo", "--run-dir", str(run.path), "--data", str(_data_dir(run)), "--limit", "20", "--json", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert list(r["runs"]) == [*DEMO_POLICIES, "full"] and r["samples"] == 20
    for policy, got in r["runs"].items():
        assert policy in printed and got["policy"] == policy
        assert got["samples"] == 20 and 0 <= got["accuracy"] <= 1
        assert {"p50", "p95"} <= set(got["latency_ms"]) and got["latency_ms"]["p50"] > 0
        assert sum(got["exit_histogram"]) == 20
    full, confident = r["runs"]["full"], r["runs"]["max-prob"]
    assert full["saving"] == 0 and full["exit_histogram"][:-1] == [0] * (len(full["exit_histogram"]) - 1)
    # What the devices computed, from their own counters: every stage of every branch for
    # full execution; in lockstep exactly the stages up to each exit for early exit.
    stage = run.load_student().macs.stage
    assert full["devices_macs_per_sample"] == sum(map(sum, stage))
    heads = sum(run.load_student().macs.head)  # the exit-based figure also counts the heads
    assert confident["saving"] > 0 and 0 < confident["devices_saving"] < 1
    assert 0 <= confident["macs_per_sample"] - confident["devices_macs_per_sample"] <= heads


def test_infer_batched_calls_answer_every_input(trained, tmp_path):
    run, splits = trained
    out = tmp_path / "infer.json"
    with ThreadCluster(run.path) as cluster:
        cluster.start_workers(len(run.read_meta().config.student.branches))
        coord = cluster.start_coordinator()
        args = ["infer", "--server", coord, "--data", str(_data_dir(run)), "--limit", "12", "--batch", "5"]
        assert main([*args, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["batch"] == 5 and r["samples"] == 12
    assert [q["label"] for q in r["requests"]] == splits.test.labels[:12].tolist()
    for q in r["requests"]:
        assert {"label", "prediction", "exit", "branches", "latency_ms"} <= set(q)
        assert q["branches"] == [0, 1, 2] and q["latency_ms"] > 0


def test_infer_keeps_what_it_received_and_says_what_is_missing(trained, tmp_path, capsys):
    run, _ = trained
    out = tmp_path / "infer.json"
    with ThreadCluster(run.path) as cluster:
        n = len(run.meta.config.student.branches)
        # Every device gone (nothing listens at their addresses): the coordinator refuses each call.
        coord = cluster.start_coordinator(workers=[f"127.0.0.1:{p}" for p in free_ports(n)], wait=False)
        args = ["infer", "--server", coord, "--data", str(_data_dir(run)), "--limit", "6", "--json", str(out)]
        assert main(args) == 1
    assert "6 of 6 inputs got no answer" in capsys.readouterr().err
    r = json.loads(out.read_text())
    assert (r["answered"], r["failed"]) == (0, 6) and all("error" in q for q in r["requests"])


@pytest.mark.e2e
def test_demo_on_onnxruntime_workers_answers_as_torch(trained, trained_export, tmp_path, capsys):
    run, _splits = trained
    out = tmp_path / "demo.json"
    argv = ["demo", "--run-dir", str(run.path), "--data", str(_data_dir(run)), "--limit", "20", "--json", str(out)]
    assert main([*argv, "--backend", "onnxruntime", "--export", str(trained_export), "--policy", "max-prob"]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["backend"] == "onnxruntime" and list(r["runs"]) == ["max-prob", "full"]
    assert "against the torch model" in printed
    for policy, got in r["runs"].items():
        agree = got["torch_agreement"]
        # fp32 onnxruntime against torch differs by ~1e-6: a threshold that close to a
        # score on one of 20 inputs is the most this could explain.
        assert agree["differ"] <= 1 and agree["predictions"] == 1 - agree["differ"] / 20, policy
        assert sum(got["exit_histogram"]) == 20 and got["failed"] == 0


def test_demo_refuses_an_export_without_onnxruntime(trained, tmp_path):
    run, _ = trained
    argv = ["demo", "--run-dir", str(run.path), "--data", str(_data_dir(run)), "--export", str(tmp_path)]
    assert main(argv) == 2


@pytest.mark.slow  # the export
def test_demo_refuses_an_export_whose_calibration_is_not_the_runs(trained, trained_export, tmp_path, capsys):
    """Its coordinators would decide with the export's thresholds and be compared with the run's."""
    import shutil

    run, _ = trained
    export = tmp_path / "export"
    shutil.copytree(trained_export, export)
    (export / "calibration.json").write_text((export / "calibration.json").read_text().replace("0.", "0.0", 1))
    argv = ["demo", "--run-dir", str(run.path), "--data", str(_data_dir(run)), "--limit", "4"]
    assert main([*argv, "--backend", "onnxruntime", "--export", str(export)]) == 2
    assert "carries another calibration" in capsys.readouterr().err


@pytest.mark.e2e
def test_demo_on_the_workers_of_a_cluster_file(trained, tmp_path, capsys):
    import yaml

    run, _ = trained
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with ThreadCluster(run.path, token="s3cret") as boards:
        addresses = boards.start_workers(RUNTIME_BRANCHES)
        workers = [{"name": f"b{i}", "address": a, "branch": i} for i, a in enumerate(addresses)]
        f = tmp_path / "cluster.yaml"
        f.write_text(yaml.safe_dump({"run": str(run.path), "token_file": "token", "workers": workers}))
        out = tmp_path / "demo.json"
        argv = ["demo", "--cluster", str(f), "--data", str(_data_dir(run)), "--limit", "8", "--policy", "max-prob"]
        assert main([*argv, "--json", str(out)]) == 0
        assert f"the {RUNTIME_BRANCHES} workers of" in capsys.readouterr().err
        r = json.loads(out.read_text())
        assert r["runs"]["full"]["answered"] == 8 and r["runs"]["full"]["devices_macs_per_sample"] > 0
        assert main([*argv, "--run-dir", str(run.path)]) == 2  # the file names the run
