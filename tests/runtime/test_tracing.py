"""--trace: OpenTelemetry spans of the gRPC calls, the trace context crossing from the
coordinator to its workers."""

from __future__ import annotations

import re

import pytest
from conftest import RUNTIME_BRANCHES, until

from distree.launch.local import LocalCluster
from distree.runtime.client import DistreeClient

pytestmark = pytest.mark.e2e  # real processes: OpenTelemetry set up per process


def _spans(log: str) -> list[tuple[str, str]]:
    """(name, trace id) of each span the console exporter printed (one JSON object each)."""
    names = re.findall(r'"name": "([^"]+)"', log)
    traces = re.findall(r'"trace_id": "(0x[0-9a-f]+)"', log)
    return list(zip(names, traces, strict=False))


def test_the_coordinators_calls_to_its_workers_carry_the_trace(trained, tmp_path):
    run, splits = trained
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES, extra=["--trace", "console"])
        address = cluster.start_coordinator(extra=["--trace", "console"])
        with DistreeClient(address, timeout_s=30) as client:
            client.infer(splits.test.images[:2])
        coordinator, worker = tmp_path / "coordinator.log", tmp_path / "worker0.log"
        assert until(lambda: "/distree.v1.Coordinator/Infer" in coordinator.read_text())
        assert until(lambda: "/distree.v1.Worker/Info" in worker.read_text())
    sent = {t for name, t in _spans(coordinator.read_text()) if name == "/distree.v1.Worker/Info"}
    served = {t for name, t in _spans(worker.read_text()) if name == "/distree.v1.Worker/Info"}
    assert sent & served, "no worker span shares a trace with the coordinator's call"
