"""Cluster files: validation, `serve --cluster`, and `cluster check` against real workers."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import RUNTIME_BRANCHES
from servers import ThreadCluster

from distree.cli.main import main
from distree.config import ConfigError
from distree.launch.local import LocalCluster, free_port
from distree.runtime.client import DistreeClient
from distree.runtime.cluster import load_cluster


def _write(path, **fields):
    path.write_text(yaml.safe_dump(fields))
    return path


def _workers(addresses):
    return [{"name": f"board{b}", "address": a, "branch": b} for b, a in enumerate(addresses)]


def test_paths_are_taken_from_the_file_and_workers_ordered_by_branch(tmp_path):
    (tmp_path / "conf").mkdir()
    workers = [{"name": "b", "address": "10.0.0.2:1", "branch": 1}, {"name": "a", "address": "10.0.0.1:1", "branch": 0}]
    f = _write(tmp_path / "conf" / "c.yaml", run="../models/x", workers=workers, token_file="token")
    c = load_cluster(f)
    assert c.run == tmp_path / "conf" / "../models/x" and c.token_file == tmp_path / "conf" / "token"
    assert c.addresses == ["10.0.0.1:1", "10.0.0.2:1"]
    assert c.coordinator.listen == "127.0.0.1:50051" and c.coordinator.mode == "lockstep"


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        ([{"name": "a", "address": "h:1", "branch": 1}], "branches 0..0 once each"),
        ([{"name": "a", "address": "h:1", "branch": 0}, {"name": "a", "address": "h:2", "branch": 1}], "name a"),
        ([{"name": "a", "address": "h:1", "branch": 0}, {"name": "b", "address": "h:1", "branch": 1}], "address h:1"),
        ([{"name": "a", "address": "no-port", "branch": 0}], "not HOST:PORT"),
        ([{"name": "a", "address": "h:1", "branch": 0, "brnach": 1}], "brnach"),
        ([], "workers"),
    ],
)
def test_a_bad_cluster_file_is_refused_naming_the_field(tmp_path, workers, message):
    with pytest.raises(ConfigError, match=message):
        load_cluster(_write(tmp_path / "c.yaml", run="r", workers=workers))


def test_an_export_is_served_by_an_onnxruntime_coordinator_and_a_run_by_a_torch_one(tmp_path):
    workers = _workers(["h:1"])
    board = load_cluster(
        _write(tmp_path / "b.yaml", export="exp", coordinator={"backend": "onnxruntime"}, workers=workers)
    )
    assert board.served == tmp_path / "exp" and board.run is None
    both = load_cluster(_write(tmp_path / "t.yaml", run="r", export="exp", workers=workers))
    assert both.served == tmp_path / "r"  # the default coordinator runs torch on the run
    with pytest.raises(ConfigError, match="give export: EXPORT_DIR"):
        load_cluster(_write(tmp_path / "x.yaml", run="r", coordinator={"backend": "onnxruntime"}, workers=workers))
    with pytest.raises(ConfigError, match="a torch coordinator serves a run"):
        load_cluster(_write(tmp_path / "y.yaml", export="exp", workers=workers))
    with pytest.raises(ConfigError, match="backend"):
        load_cluster(_write(tmp_path / "z.yaml", run="r", coordinator={"backend": "tflite"}, workers=workers))


def test_a_missing_cluster_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="cluster file not found"):
        load_cluster(tmp_path / "nope.yaml")


@pytest.mark.e2e
def test_serve_and_check_a_cluster_from_its_file(trained, tmp_path, capsys):
    """``cluster check`` against workers served here; ``serve --cluster`` as its own process."""
    run, splits = trained
    with ThreadCluster(run.path) as boards, LocalCluster(run.path, log_dir=tmp_path) as cluster:
        addresses = boards.start_workers(RUNTIME_BRANCHES)
        listen = f"127.0.0.1:{free_port()}"
        f = _write(
            tmp_path / "cluster.yaml",
            run=str(run.path),
            coordinator={"listen": listen, "policy": "max-prob"},
            workers=_workers(addresses),
        )
        out = tmp_path / "check.json"
        assert main(["cluster", "check", str(f), "--json", str(out)]) == 0
        printed = capsys.readouterr().out
        assert f"{RUNTIME_BRANCHES} of {RUNTIME_BRANCHES} workers pass" in printed
        rows = json.loads(out.read_text())["workers"]
        assert [r["ok"] for r in rows] == [True] * RUNTIME_BRANCHES
        assert all(r["weights_match"] and r["rtt_ms"] > 0 and r["peak_rss_mib"] > 0 for r in rows)
        assert {r["backend"] for r in rows} == {"torch cpu"}

        cluster.start_command("coordinator", ["serve", "--cluster", str(f)], listen)
        with DistreeClient(listen, timeout_s=30) as client:
            assert client.model_info().policy == "max-prob"  # from the file
            assert len(client.infer(splits.test.images[:4])) == 4

        # Two boards swapped: both answer SERVING, and both are named.
        swapped = _workers([addresses[1], addresses[0], *addresses[2:]])
        g = _write(tmp_path / "swapped.yaml", run=str(run.path), workers=swapped)
        assert main(["cluster", "check", str(g)]) == 1
        printed = capsys.readouterr().out
        assert "serves branch 1, the cluster file says 0" in printed and "failing: board0, board1" in printed

        # A board gone: nothing listens at its address any more.
        gone = _workers([addresses[0], f"127.0.0.1:{free_port()}", *addresses[2:]])
        f = _write(tmp_path / "gone.yaml", run=str(run.path), workers=gone)
        assert main(["cluster", "check", str(f), "--timeout-s", "1"]) == 1
        printed = capsys.readouterr().out
        assert "unreachable" in printed and "failing: board1" in printed


def test_cluster_check_refuses_more_workers_than_the_model_has_branches(trained, tmp_path, capsys):
    run, _ = trained
    branches = len(run.meta.config.student.branches)
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(branches + 1)]
    f = _write(tmp_path / "c.yaml", run=str(run.path), workers=_workers(addresses))
    assert main(["cluster", "check", str(f)]) == 2
    assert f"gives {branches + 1} workers; {run.path} has {branches} branches" in capsys.readouterr().err
