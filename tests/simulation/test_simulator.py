import math

import numpy as np
import pytest
import torch
from conftest import calibration_of

from distree.config import ConfigError
from distree.evaluation.measures import accuracy, evaluate_policy, model_thresholds
from distree.inference.records import fuse_exits
from distree.simulation.engine import Model, run_system, simulate, simulate_system, systems_for
from distree.simulation.scenario import Availability, Scenario, load_scenario
from distree.simulation.systems import pipeline_partition
from distree.simulation.trace import TRACE_FILE, Trace


@pytest.fixture(scope="module")
def model(trained):
    run, _ = trained
    return Model.from_run(run, Trace.load(run.path / TRACE_FILE))  # recorded by the fixture


def scenario(devices=3, **kw) -> Scenario:
    base = {
        "name": "test",
        "devices": [{"name": f"d{i}", "macs_per_s": 1e8, "overhead_ms": 0.5} for i in range(devices)],
        "link": {"bandwidth_mbps": 10, "rtt_ms": 4, "header_bytes": 100},
        "arrivals": {"rate_per_s": 5},
        "requests": 60,
    }
    base.update(kw)
    return Scenario.model_validate(base)


def spaced(n: int, gap_s: float = 10.0) -> dict:
    """Arrivals far enough apart that no two requests meet."""
    return {"trace": [i * gap_s for i in range(n)]}


def test_trace_roundtrip(trained, model):
    run, _ = trained
    again = Trace.load(run.path / TRACE_FILE)
    assert again.meta == model.trace.meta
    assert torch.equal(again.teacher_exit_logits, model.trace.teacher_exit_logits)
    assert all(torch.equal(a, b) for pa, pb in zip(again.vectors, model.trace.vectors) for a, b in zip(pa, pb))


def test_one_device_latency_is_compute_plus_link_time(model):
    sc = scenario(devices=1, arrivals=spaced(5), requests=5)
    meta = model.trace.meta
    link = sc.link
    compute = sc.devices[0].overhead_ms / 1000 + sum(meta.teacher_block_macs) / sc.devices[0].macs_per_s
    wire = ((meta.input_bytes + link.header_bytes) + (meta.num_classes * 4 + link.header_bytes)) * 8 / 10e6
    expected_ms = 1000 * (compute + wire + link.rtt_ms / 1000)
    lat = simulate_system(sc, model, "teacher")["latency_ms"]
    assert lat["p50"] == pytest.approx(expected_ms, rel=1e-9)
    assert lat["p99"] == pytest.approx(expected_ms, rel=1e-9)


def test_md1_queue_mean_matches_closed_form(model):
    """Poisson arrivals, deterministic service, one server: W = D + rho * D / (2 (1 - rho))."""
    meta = model.trace.meta
    rate = 1e8
    service = sum(meta.teacher_block_macs) / rate
    rho = 0.6
    sc = scenario(
        devices=1,
        link={"bandwidth_mbps": 1e12, "rtt_ms": 0, "header_bytes": 0},
        arrivals={"rate_per_s": rho / service},
        requests=20000,
    )
    sc = sc.model_copy(update={"devices": [sc.devices[0].model_copy(update={"macs_per_s": rate, "overhead_ms": 0.0})]})
    mean_ms = simulate_system(sc, model, "teacher")["latency_ms"]["mean"]
    expected_ms = 1000 * (service + rho * service / (2 * (1 - rho)))
    assert mean_ms == pytest.approx(expected_ms, rel=0.04)


def test_device_never_up_is_never_used(model):
    sc = scenario(requests=40)
    down = sc.devices[1].model_copy(update={"availability": Availability(up=False)})
    sc = sc.model_copy(update={"devices": [sc.devices[0], down, sc.devices[2]]})
    run = run_system(sc, model, "distree-full")
    assert all(1 not in d.branches for d in run.done)
    assert all(d.latency_s is not None for d in run.done)
    assert run.devices[1].macs == 0
    # The pipeline needs every device: with one never up, no request is answered.
    assert simulate_system(sc, model, "pipeline")["failed"] == 40


def test_requests_decide_at_the_thresholds_for_the_devices_that_answered(model):
    # With every device: never stop early. With two of three: always stop at the first exit.
    saved = calibration_of({"max-prob": {3: [None, None], 2: [0.0, 0.0], 1: [None, None]}})
    by_count = Model(model.trace, model.student, saved)
    sc = scenario(requests=20)
    assert {d.exit for d in run_system(sc, by_count, "distree-max-prob").done} == {2}
    down = sc.devices[1].model_copy(update={"availability": Availability(up=False)})
    sc = sc.model_copy(update={"devices": [sc.devices[0], down, sc.devices[2]]})
    assert {d.exit for d in run_system(sc, by_count, "distree-max-prob").done} == {0}


def test_replay_gives_offline_accuracy(trained, model):
    """All devices up, no deadline: each system's accuracy is the offline evaluation's."""
    run, splits = trained
    n = len(splits.test)
    sc = scenario(arrivals=spaced(n), requests=n)
    student = run.load_student()
    rec = fuse_exits(student, model.trace.vectors)
    labels = splits.test.labels
    saved = run.read_calibration()
    report = simulate(sc, model)
    assert set(report["results"]) == set(systems_for(sc, model))
    assert model.calibrated_policies()
    for policy in ["full", *model.calibrated_policies()]:
        offline = evaluate_policy(
            student, policy, model_thresholds(policy, student, saved).at(student.num_branches), rec, labels
        )
        simulated = report["results"][f"distree-{policy}"]
        assert simulated["accuracy"] == pytest.approx(offline["accuracy"], abs=1e-4)
        if policy != "full":
            assert simulated["exit_histogram"] == offline["exit_histogram"]
    teacher_acc = accuracy(model.trace.teacher_logits, labels)
    assert report["results"]["teacher"]["accuracy"] == pytest.approx(teacher_acc)
    assert report["results"]["pipeline"]["accuracy"] == pytest.approx(teacher_acc)


def test_eager_and_lockstep_agree_on_answers(model):
    base = scenario(arrivals=spaced(30), requests=30)
    policy = model.calibrated_policies()[0]
    lock = run_system(base, model, f"distree-{policy}")
    eager = run_system(base.model_copy(update={"mode": "eager"}), model, f"distree-{policy}")
    assert [(d.exit, d.correct) for d in lock.done] == [(d.exit, d.correct) for d in eager.done]
    # Eager runs ahead: it finishes no later but may compute stages past the exit.
    assert sum(d.macs for d in eager.devices) >= sum(d.macs for d in lock.devices)
    assert np.mean([d.latency_s for d in eager.done]) <= np.mean([d.latency_s for d in lock.done])


def test_deadline_rule_cuts_latency(model):
    sc = scenario(arrivals=spaced(30), requests=30)
    loose = simulate_system(sc, model, "distree-full")
    tight_ms = loose["latency_ms"]["p50"] * 0.6
    tight = simulate_system(sc.model_copy(update={"deadline_ms": tight_ms}), model, "distree-full")
    assert tight["latency_ms"]["mean"] < loose["latency_ms"]["mean"]
    assert tight["deadline_hit_rate"] > 0


def test_pipeline_partition_balances_and_covers():
    cuts = pipeline_partition([10, 10, 10, 10, 10, 10], 3)
    assert cuts == [2, 4, 6]
    cuts = pipeline_partition([100, 1, 1, 1], 4)
    assert cuts == [1, 2, 3, 4]
    assert pipeline_partition([5, 5], 4) == [1, 2]


def test_scenario_errors_name_the_field(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\ndevices: [{name: a, macs_per_s: -1}]\narrivals: {rate_per_s: 1}\n")
    with pytest.raises(ConfigError, match=r"devices\.0\.macs_per_s"):
        load_scenario(bad)
    bad.write_text("name: x\ndevices: [{name: a, macs_per_s: 1}]\narrivals: {}\n")
    with pytest.raises(ConfigError, match="exactly one of rate_per_s and trace"):
        load_scenario(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_scenario(tmp_path / "missing.yaml")


def test_shipped_scenarios_load():
    from pathlib import Path

    files = sorted(Path(__file__).parents[2].joinpath("scenarios").glob("*.yaml"))
    assert any(f.name == "four-boards-wifi.yaml" for f in files)
    for f in files:
        sc = load_scenario(f)
        assert math.isfinite(sc.devices[0].macs_per_s)


def test_token_bucket_burst_then_rate():
    from distree.simulation.devices import TokenBucket

    fluid = TokenBucket(1000.0, 0)
    assert fluid.serialisation_s(500, 0.0) == pytest.approx(0.5)
    bucket = TokenBucket(1000.0, 600)
    assert bucket.serialisation_s(500, 0.0) == 0.0  # an idle link sends up to the burst at once
    assert bucket.serialisation_s(500, 0.0) == pytest.approx(0.4)  # 100 tokens left, 400 bytes at the rate
    assert bucket.serialisation_s(300, 0.4 + 0.3) == pytest.approx(0.0)  # refilled 300 in 0.3 s


def test_stage_time_variability_keeps_the_mean(model):
    meta = model.trace.meta
    sc = scenario(
        devices=1, link={"bandwidth_mbps": 1e12, "rtt_ms": 0, "header_bytes": 0}, arrivals=spaced(4000), requests=4000
    )
    service_ms = 1000 * (sc.devices[0].overhead_ms / 1000 + sum(meta.teacher_block_macs) / sc.devices[0].macs_per_s)
    varied = sc.model_copy(update={"devices": [sc.devices[0].model_copy(update={"stage_time_cv": 0.5})]})
    lat = np.asarray([d.latency_s * 1000 for d in run_system(varied, model, "teacher").done])
    assert lat.mean() == pytest.approx(service_ms, rel=0.03)
    assert lat.std() / lat.mean() == pytest.approx(0.5, rel=0.1)


def test_shorter_back_off_finds_brief_up_periods(model):
    """Devices up a tenth of the time: probing more often uses them in more of their up periods."""
    flapping = Availability(mean_up_s=0.5, mean_down_s=4.5)
    sc = scenario(arrivals={"rate_per_s": 20}, requests=600)
    sc = sc.model_copy(update={"devices": [d.model_copy(update={"availability": flapping}) for d in sc.devices]})

    def failed(max_s: float) -> int:
        coordinator = sc.coordinator.model_copy(update={"retry_initial_s": 0.05, "retry_max_s": max_s})
        return simulate_system(sc.model_copy(update={"coordinator": coordinator}), model, "distree-full")["failed"]

    short, long = failed(0.05), failed(5.0)
    assert short < long, (short, long)


def test_trace_files_are_read_relative_to_the_scenario(tmp_path):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "up.csv").write_text("time_s,up\n0,1\n2.5,0\n4,1\n")
    (tmp_path / "traces" / "arrivals.csv").write_text("0.1\n0.2\n0.7\n")
    sc = tmp_path / "s.yaml"
    sc.write_text(
        "name: t\n"
        "devices: [{name: a, macs_per_s: 1.0e9, availability: {trace_file: traces/up.csv}}]\n"
        "arrivals: {trace_file: traces/arrivals.csv}\n"
        "requests: 3\n"
    )
    loaded = load_scenario(sc)
    assert loaded.devices[0].availability.trace == [(0.0, True), (2.5, False), (4.0, True)]
    assert loaded.arrivals.trace == [0.1, 0.2, 0.7]
    (tmp_path / "traces" / "arrivals.csv").write_text("0.1\nsoon\n")
    with pytest.raises(ConfigError, match=r"arrivals.csv:2: expected 1 number"):
        load_scenario(sc)
    sc.write_text(sc.read_text().replace("traces/up.csv", "traces/missing.csv"))
    with pytest.raises(ConfigError, match=r"devices.0.availability: trace file not found"):
        load_scenario(sc)
