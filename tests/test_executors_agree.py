"""Offline evaluation, the in-process executor, the gRPC runtime and the simulator decide
alike: the same exit, prediction and MACs for every input, under every servable policy."""

from __future__ import annotations

import pytest
import torch
from conftest import RUNTIME_BRANCHES
from servers import ThreadCluster

from distree.evaluation.measures import model_thresholds
from distree.inference.inprocess import early_exit_batch
from distree.inference.records import exit_costs, student_exits
from distree.policies import decide_exits, exit_scores, make_policy, policy_names
from distree.runtime.client import DistreeClient
from distree.runtime.coordinator import CoordinatorOptions
from distree.simulation.engine import Model, run_system
from distree.simulation.scenario import Scenario
from distree.simulation.trace import record_trace

POLICIES = policy_names(servable=True)


@pytest.fixture(scope="module")
def executors(trained):
    """Every executor's (exits, predictions, MACs) per policy on the test split."""
    run, splits = trained
    student, meta = run.load_student(), run.read_meta()
    images, saved = splits.test.images, run.read_calibration()
    n = len(images)
    rec = student_exits(student, images, meta.data.normalization, 64, torch.device("cpu"))
    model = Model.from_run(run, record_trace(run, splits.source, torch.device("cpu"), log=lambda m: None))
    scenario = Scenario.model_validate(
        {
            "name": "all up, one request at a time",
            "devices": [{"name": f"d{i}", "macs_per_s": 1e9} for i in range(RUNTIME_BRANCHES)],
            "link": {"bandwidth_mbps": 100, "rtt_ms": 1},
            "arrivals": {"trace": [10.0 * i for i in range(n)]},
            "requests": n,
        }
    )
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
