"""Each role's /metrics: its own families only, build info, and every expression of the
shipped Grafana dashboard naming a metric the processes export."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from conftest import RUNTIME_BRANCHES
from prometheus_client.parser import text_string_to_metric_families

from distree import __version__
from distree.launch.local import LocalCluster, free_ports
from distree.runtime.client import DistreeClient
from distree.runtime.metrics import REGISTRIES

pytestmark = pytest.mark.e2e  # real processes: one Prometheus registry per process and role

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "distree.json"


def _scrape(port: int) -> dict[str, list]:
    """Sample name -> samples at 127.0.0.1:port/metrics, and under "families" the names of
    the families exported."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list] = {"families": []}
    for family in text_string_to_metric_families(text):
        out["families"].append(family.name)
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


@pytest.fixture(scope="module")
def scraped(trained, tmp_path_factory):
    run, splits = trained
    worker_port, coordinator_port = free_ports(2)
    with LocalCluster(run.path, log_dir=tmp_path_factory.mktemp("metrics")) as cluster:
        addresses = cluster.start_workers(RUNTIME_BRANCHES)
        # Worker 0 again, on its port, with its metrics served.
        cluster.kill("worker0")
        cluster.start_worker(0, port=int(addresses[0].rsplit(":", 1)[1]), extra=["--metrics-port", str(worker_port)])
        address = cluster.start_coordinator(extra=["--policy", "max-prob", "--metrics-port", str(coordinator_port)])
        with DistreeClient(address, timeout_s=30) as client:
            for i in range(0, 16, 4):
                client.infer(splits.test.images[i : i + 4])
        return {"worker": _scrape(worker_port), "coordinator": _scrape(coordinator_port)}


def _defined(role: str) -> set[str]:
    """The names of the distree families registered for ``role``, but build info."""
    return {f.name for f in REGISTRIES[role].collect() if f.name.startswith("distree_")} - {"distree_build"}


def test_each_role_exports_its_own_families_and_its_build(scraped):
    only_coordinator, only_worker = _defined("coordinator"), _defined("worker")
    assert "distree_requests" in only_coordinator and "distree_worker_stages" in only_worker
    assert not only_coordinator & only_worker
    assert not set(scraped["worker"]["families"]) & only_coordinator, "a worker exports coordinator families"
    assert not set(scraped["coordinator"]["families"]) & only_worker, "a coordinator exports worker families"
    assert only_worker <= set(scraped["worker"]["families"])
    for role, samples in scraped.items():
        (build,) = samples["distree_build_info"]
        assert build.labels == {"version": __version__, "role": role}
        assert samples["process_resident_memory_bytes"][0].value > 0


def test_the_queue_waits_are_timed_apart_from_compute(scraped):
    assert scraped["worker"]["distree_worker_queue_seconds_count"][0].value > 0
    assert scraped["coordinator"]["distree_queue_seconds_count"][0].value == 4  # one per call


def test_every_dashboard_expression_names_an_exported_metric(scraped):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    exported = set(scraped["worker"]) | set(scraped["coordinator"])
    for expr in exprs:
        names = set(re.findall(r"\b((?:distree|process)_[a-z_]+)\b", expr))
        assert names, expr
        missing = names - exported
        assert not missing, f"{expr!r} names {missing}, which no distree process exports"
    variables = [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert all("distree_build_info" in q for q in variables)
