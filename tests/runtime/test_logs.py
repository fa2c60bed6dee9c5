"""Request ids across hops: every answer names the group it ran in, and that id is in the
debug logs of the coordinator and of each worker whose branch was fused; both log formats."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import RUNTIME_BRANCHES, until
from servers import ThreadCluster

from distree.launch.local import LocalCluster
from distree.runtime.client import DistreeClient


@pytest.mark.e2e
def test_a_group_id_crosses_every_hop_it_took(trained, tmp_path):
    run, splits = trained
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES, extra=["--log-level", "debug"])
        address = cluster.start_coordinator(extra=["--log-level", "debug", "--log-format", "text", "--policy", "full"])
        with DistreeClient(address, timeout_s=30) as client:
            answers = client.infer(splits.test.images[:3])
        gid = answers[0].group_id
        assert len(gid) == 32 and {a.group_id for a in answers} == {gid}  # one call, one group

        def logged(name: str) -> bool:
            return gid in (tmp_path / f"{name}.log").read_text()

        assert until(lambda: logged("coordinator"))
        line = next(x for x in (tmp_path / "coordinator.log").read_text().splitlines() if gid in x)
        assert "debug" in line and "group answered" in line and f"group_id={gid}" in line  # text format
        for b in answers[0].branches:
            assert until(lambda b=b: logged(f"worker{b}")), f"worker {b} never logged {gid}"
            records = [json.loads(x) for x in (tmp_path / f"worker{b}.log").read_text().splitlines()]
            stages = sorted(r["stage"] for r in records if r.get("group_id") == gid)
            assert stages == list(range(len(answers[0].stage_ms)))  # every stage it ran, one JSON line each


def test_at_info_level_no_line_per_request(trained, caplog):
    run, splits = trained
    caplog.set_level(logging.INFO, logger="distree")
    with ThreadCluster(run.path) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES)
        address = cluster.start_coordinator()
        with DistreeClient(address, timeout_s=30) as client:
            (answer,) = client.infer(splits.test.images[:1])
    assert any(r.name in ("distree.coordinator", "distree.worker") for r in caplog.records), (
        "the servers' records are seen"
    )
    assert not [r for r in caplog.records if answer.group_id in r.getMessage() + str(vars(r))]
