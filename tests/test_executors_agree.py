"""Offline evaluation, the in-process executor, the gRPC runtime and the simulator decide
alike: the same exit, prediction and MACs for every input, under every servable policy."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import RUNTIME_BRANCHES
from servers import ThreadCluster

from distree.evaluation.measures import model_thresholds
from distree.inference.inprocess import early_exit_batch
from distree.inference.records import (
    branch_vectors,
    exit_costs,
    fuse_exits,
    fuse_schedule,
    schedule_costs,
    student_exits,
)
from distree.policies import decide_exits, exit_scores, make_policy, policy_names
from distree.policies.calibration_file import ScheduleCalibration
from distree.policies.schedule import Schedule
from distree.run import RunDir
from distree.runtime.client import DistreeClient
from distree.runtime.coordinator import CoordinatorOptions
from distree.simulation.engine import Model, run_system
from distree.simulation.scenario import Scenario
from distree.simulation.trace import record_trace

POLICIES = policy_names(servable=True)


def _one_at_a_time(n: int) -> Scenario:
    """``n`` requests, each arriving after the previous one has answered, every device up."""
    return Scenario.model_validate(
        {
            "name": "all up, one request at a time",
            "devices": [{"name": f"d{i}", "macs_per_s": 1e9} for i in range(RUNTIME_BRANCHES)],
            "link": {"bandwidth_mbps": 100, "rtt_ms": 1},
            "arrivals": {"trace": [10.0 * i for i in range(n)]},
            "requests": n,
        }
    )


@pytest.fixture(scope="module")
def executors(trained):
    """Every executor's (exits, predictions, MACs) per policy on the test split."""
    run, splits = trained
    student, meta = run.load_student(), run.read_meta()
    images, saved = splits.test.images, run.read_calibration()
    n = len(images)
    rec = student_exits(student, images, meta.data.normalization, 64, torch.device("cpu"))
    model = Model.from_run(run, record_trace(run, splits.source, torch.device("cpu"), log=lambda m: None))
    scenario = _one_at_a_time(n)
    out: dict[str, dict[str, tuple[list, list, list]]] = {p: {} for p in POLICIES}
    with ThreadCluster(run.path) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES)
        coords = {p: cluster.start_coordinator(CoordinatorOptions(policy=p)) for p in POLICIES}
        for p in POLICIES:
            policy, thresholds = make_policy(p), model_thresholds(p, student, saved)
            exits = decide_exits(exit_scores(policy, rec), thresholds.at(student.num_branches))
            preds = rec.logits[exits, torch.arange(n)].argmax(-1)
            out[p]["offline"] = (exits.tolist(), preds.tolist(), exit_costs(student, p)[exits].long().tolist())
            inproc = early_exit_batch(student, policy, thresholds, images, meta.data.normalization)
            out[p]["in-process"] = (inproc.exit.tolist(), inproc.predictions.tolist(), inproc.macs.tolist())
            with DistreeClient(coords[p]) as client:
                answers = client.infer(images)
            out[p]["runtime"] = ([a.exit for a in answers], [a.prediction for a in answers], [a.macs for a in answers])
            done = sorted(run_system(scenario, model, f"distree-{p}").done, key=lambda d: d.sample)
            assert [d.sample for d in done] == list(range(n))
            out[p]["simulator"] = ([d.exit for d in done], [d.prediction for d in done], [d.macs for d in done])
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_every_executor_gives_the_offline_exits_predictions_and_macs(executors, policy):
    offline = executors[policy]["offline"]
    for name in ("in-process", "runtime", "simulator"):
        got = executors[policy][name]
        for what, want, have in zip(("exits", "predictions", "MACs"), offline, got, strict=True):
            assert have == want, f"{policy}: {name} {what} differ from offline evaluation"


def test_the_fixture_exits_early_and_late(executors):
    # Otherwise agreement would be trivial: some policy stops early on some inputs, not on all.
    exits = [e for p in POLICIES for e in executors[p]["offline"][0]]
    assert 0 < sum(e < max(exits) for e in exits) < len(exits)


SCHEDULE = "0:1 1:1 1:3 2:3"


def test_every_executor_follows_a_schedule_over_depth_and_devices(trained, tmp_path):
    # A calibration that wakes devices late: each executor starts input after input on the
    # branches in turn and must give, per input, the exit, answer and MACs of the offline
    # step records for the branch that input started on.
    src, splits = trained
    run = RunDir(shutil.copytree(src.path, tmp_path / "run"))
    student, meta = run.load_student(), run.read_meta()
    images, n, branches = splits.test.images, len(splits.test.images), RUNTIME_BRANCHES
    plan = Schedule.parse(SCHEDULE)
    vectors = branch_vectors(student, images, meta.data.normalization, 64, torch.device("cpu"))
    policy = make_policy("max-prob")
    by_start = [fuse_schedule(student, vectors, plan, torch.full((n,), s)) for s in range(branches)]
    scores = torch.cat([exit_scores(policy, rec) for rec in by_start], dim=1)
    per_step = [float(s.quantile(0.6)) for s in scores[:-1]]
    saved = run.read_calibration()
    entry = saved.policies["max-prob"]
    fit = {k: v for k, v in entry.model_dump().items() if k not in ("by_present", "thresholds")}
    over = ScheduleCalibration(**fit, thresholds=per_step, schedule=SCHEDULE)
    run.write_calibration(
        saved.model_copy(update={"policies": {"max-prob": entry.model_copy(update={"depth_and_devices": over})}})
    )

    def expected(i: int, start: int) -> tuple[int, int, int]:
        rec = by_start[start]
        step = int(decide_exits(exit_scores(policy, rec), per_step)[i])
        macs = schedule_costs(student, "max-prob", plan, torch.full((n,), start))[step, i]
        return plan.steps[step].exit, int(rec.logits[step, i].argmax()), int(macs)

    thresholds = model_thresholds("max-prob", student, run.read_calibration())
    assert thresholds.schedule == plan
    got = {}
    for s in range(branches):  # in process: the inputs that start on branch s together
        rows = torch.arange(n)[torch.arange(n) % branches == s]
        out = early_exit_batch(student, policy, thresholds, images[rows], meta.data.normalization, start=s)
        for r, e, p, m in zip(rows.tolist(), out.exit.tolist(), out.predictions.tolist(), out.macs.tolist()):
            got[r] = (e, p, m)
    assert [got[i] for i in range(n)] == [expected(i, i % branches) for i in range(n)], "in-process"

    with ThreadCluster(run.path) as cluster:
        cluster.start_workers(branches)
        for mode in ("lockstep", "eager"):
            address = cluster.start_coordinator(CoordinatorOptions(policy="max-prob", mode=mode))
            with DistreeClient(address) as client:  # one input per call: group i starts on branch i mod 3
                assert client.model_info().schedule == SCHEDULE
                answers = [client.infer(images[i : i + 1])[0] for i in range(n)]
            runtime = [(a.exit, a.prediction, a.macs) for a in answers]
            assert runtime == [expected(i, i % branches) for i in range(n)], mode
            assert [a.start for a in answers] == [i % branches for i in range(n)]
            assert {len(a.branches) for a in answers} > {branches}, "some inputs should be answered by fewer devices"
        # A device down: groups wake the others from the start, with the depth-only
        # thresholds for two branches present, whichever branch their turn would start on.
        dead = cluster._address()  # nothing listens there
        address = cluster.start_coordinator(
            CoordinatorOptions(policy="max-prob"), workers=[*cluster.worker_addresses[:2], dead]
        )
        with DistreeClient(address) as client:
            answers = [client.infer(images[i : i + 1])[0] for i in range(n)]
        exits = decide_exits(exit_scores(policy, fuse_exits(student, vectors, [0, 1])), thresholds.at(2))
        assert [a.exit for a in answers] == exits.tolist()
        assert {tuple(a.branches) for a in answers} == {(0, 1)}

    model = Model.from_run(run, record_trace(run, splits.source, torch.device("cpu"), log=lambda m: None))
    done = run_system(_one_at_a_time(n), model, "distree-max-prob").done
    simulated = {d.sample: ((d.exit, d.prediction, d.macs), d.request) for d in done}
    assert [simulated[i][0] for i in range(n)] == [expected(i, simulated[i][1] % branches) for i in range(n)]
