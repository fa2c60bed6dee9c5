import csv
import json

import pytest

from distree.cli.main import main

SCENARIO = """
name: tiny
description: three small devices
devices:
  - {name: a, macs_per_s: 1.0e8, overhead_ms: 0.5}
  - {name: b, macs_per_s: 1.0e8, overhead_ms: 0.5}
  - {name: c, macs_per_s: 5.0e7, overhead_ms: 0.5, availability: {mean_up_s: 2, mean_down_s: 1}}
link: {bandwidth_mbps: 20, rtt_ms: 2, jitter_ms: 0.5}
arrivals: {rate_per_s: 20}
requests: 40
deadline_ms: 50
"""


def test_simulate_sweep_and_report_commands(trained, tmp_path, capsys):
    run, splits = trained
    sc = tmp_path / "tiny.yaml"
    sc.write_text(SCENARIO)
    common = [str(run.path), "--data", splits.source]
    out_json = tmp_path / "sim.json"
    assert main(["simulate", str(sc), *common, "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "distree-feature-diff" in table and "pipeline" in table
    report = json.loads(out_json.read_text())
    for system in ("teacher", "pipeline", "single-device-exit", "distree-full", "distree-feature-diff"):
        r = report["results"][system]
        assert 0 <= r["accuracy"] <= 1 and r["macs_per_sample"] > 0
        assert set(r["latency_ms"]) == {"mean", "p50", "p95", "p99"}
        assert 0 <= r["deadline_hit_rate"] <= 1

    csv_path = tmp_path / "sweep.csv"
    assert main(["sweep", str(sc), *common, "--param", "bandwidth", "--values", "1,100", "--csv", str(csv_path)]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    slow = {r["system"]: float(r["mean_ms"]) for r in rows if float(r["value"]) == 1}
    fast = {r["system"]: float(r["mean_ms"]) for r in rows if float(r["value"]) == 100}
    assert all(slow[s] > fast[s] for s in fast)

    out = tmp_path / "report"
    assert main(["report", *common, "--scenario", str(sc), "--requests", "20", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for png in ("accuracy_vs_macs", "latency_cdf", "exits_per_stage", "accuracy_vs_devices", "latency_vs_bandwidth"):
        assert (out / f"{png}.png").stat().st_size > 1000 and f"({png}.png)" in text


def test_bad_sweep_values_are_rejected(trained, tmp_path, capsys):
    run, _splits = trained
    sc = tmp_path / "tiny.yaml"
    sc.write_text(SCENARIO)
    code = main(["sweep", str(sc), str(run.path), "--param", "devices", "--values", "9", "--csv", str(tmp_path / "x")])
    assert code == 2
    assert "devices: 9 is outside 1..3" in capsys.readouterr().err


def test_bad_request_count_is_rejected(trained, tmp_path, capsys):
    run, _ = trained
    sc = tmp_path / "tiny.yaml"
    sc.write_text(SCENARIO)
    with pytest.raises(SystemExit) as stop:
        main(["simulate", str(sc), str(run.path), "--requests", "0"])
    assert stop.value.code == 2 and "--requests: must be at least 1" in capsys.readouterr().err


def test_missing_trace_without_data_says_what_to_run(trained, tmp_path, capsys, monkeypatch):
    import shutil

    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "trace.safetensors").unlink(missing_ok=True)
    monkeypatch.delenv("DISTREE_DATA", raising=False)
    sc = tmp_path / "tiny.yaml"
    sc.write_text(SCENARIO)
    assert main(["simulate", str(sc), str(copy)]) == 2
    assert f"run 'distree record {copy} --data PATH'" in capsys.readouterr().err
