"""A board's worker: `distree worker --backend onnxruntime` serving an export in a process
where torch cannot be imported, behind an ordinary coordinator and behind one that runs on
the export too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import RUNTIME_BRANCHES
from servers import ThreadCluster

from distree.export.manifest import read_manifest
from distree.launch.local import LocalCluster, free_port
from distree.runtime.client import DistreeClient
from distree.runtime.coordinator import CoordinatorOptions

pytestmark = pytest.mark.e2e  # real processes: workers in a board's install, without torch


def test_a_cluster_without_torch_answers_as_the_torch_coordinator(trained, trained_export, tmp_path, board_only):
    """Workers and coordinator all on an export, in processes where torch cannot be
    imported: the coordinator fuses with the exported heads (onnxruntime) and decides with
    the run's calibration shipped in the export. A torch coordinator over the same workers
    gives the same exits, predictions, branches and MACs, for a policy that reads the
    fused embeddings (lockstep) and for one that reads the branches' agreement (eager);
    at full execution, the torch model's predictions."""
    run, splits = trained
    export = trained_export
    assert read_manifest(export).calibration == "calibration.json"
    board = ["env", f"PYTHONPATH={board_only}"]
    images = splits.test.images[:24]
    policies = {"conf-then-feature-diff": "lockstep", "feature-agreement": "eager", "full": "lockstep"}
    # The boards' workers and coordinators as processes of a board's install; the torch
    # coordinators they are compared with are served here.
    placement = lambda b: ("127.0.0.1", board)  # noqa: E731
    with LocalCluster(run.path, log_dir=tmp_path, placement=placement) as cluster, ThreadCluster(run.path) as here:
        workers = cluster.start_workers(RUNTIME_BRANCHES, extra=["--backend", "onnxruntime"], source=export)
        answers = {}
        for policy, mode in policies.items():
            on_board = cluster.start_coordinator(
                f"onnxruntime-{policy}",
                extra=["--backend", "onnxruntime", "--policy", policy, "--mode", mode],
                source=export,
                prefix=board,
            )
            on_torch = here.start_coordinator(CoordinatorOptions(policy=policy, mode=mode), workers=workers)
            for backend, address in (("onnxruntime", on_board), ("torch", on_torch)):
                with DistreeClient(address, timeout_s=30) as client:
                    answers[backend, policy] = client.infer(images)
    for policy in policies:
        torch_side, board_side = answers["torch", policy], answers["onnxruntime", policy]
        assert [a.exit for a in board_side] == [a.exit for a in torch_side], policy
        decided = policy != "full"
        assert len({a.exit for a in board_side}) > decided, (
            f"{policy}: every input left at one exit; nothing was decided"
        )
        for a, b in zip(board_side, torch_side):
            assert (a.prediction, a.branches, a.macs) == (b.prediction, b.branches, b.macs)
            torch.testing.assert_close(torch.tensor(a.probabilities), torch.tensor(b.probabilities), atol=1e-4, rtol=0)
    for policy in policies:
        assert "not in this install" not in (tmp_path / f"onnxruntime-{policy}.log").read_text()
    assert all(a.branches == list(range(RUNTIME_BRANCHES)) for a in answers["torch", "full"])  # every board fused
    student = run.load_student().eval()
    with torch.no_grad():
        expected = student(run.meta.data.normalization(images))[-1].logits.argmax(-1)
    assert [a.prediction for a in answers["torch", "full"]] == expected.tolist()
    assert "not in this install" not in (tmp_path / "worker0.log").read_text()


def test_a_board_cluster_file_is_checked_served_and_loaded_without_torch(trained, trained_export, tmp_path, board_only):
    """A cluster file that names an export and an onnxruntime coordinator: ``cluster
    check`` compares the workers' weights with the export's manifest, ``serve --cluster``
    serves it, and ``distree.load(EXPORT)`` answers as the cluster does, every process in
    a board's install (no torch)."""
    run, splits = trained
    board = ["env", f"PYTHONPATH={board_only}"]
    images = splits.test.images[:16]
    placement = lambda b: ("127.0.0.1", board)  # noqa: E731
    with LocalCluster(run.path, log_dir=tmp_path, placement=placement) as cluster:
        workers = cluster.start_workers(RUNTIME_BRANCHES, extra=["--backend", "onnxruntime"], source=trained_export)
        listen = f"127.0.0.1:{free_port()}"
        cluster_file = tmp_path / "cluster.yaml"
        entries = "".join(f'  - {{name: board{b}, address: "{a}", branch: {b}}}\n' for b, a in enumerate(workers))
        cluster_file.write_text(
            f"export: {trained_export}\n"
            f'coordinator: {{backend: onnxruntime, listen: "{listen}", policy: max-prob}}\n'
            f"workers:\n{entries}"
        )
        distree = [*board, sys.executable, "-m", "distree"]
        check = subprocess.run([*distree, "cluster", "check", str(cluster_file)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"{RUNTIME_BRANCHES} of {RUNTIME_BRANCHES} workers pass" in check.stdout
        assert "onnxruntime" in check.stdout  # the backend each worker reports
        cluster.start_command("board-coordinator", ["serve", "--cluster", str(cluster_file)], listen, prefix=board)
        with DistreeClient(listen, timeout_s=30) as client:
            served = client.infer(images)
        np.save(tmp_path / "images.npy", images.numpy())
        local = subprocess.run(
            [
                *board,
                sys.executable,
                "-c",
                "import json, sys, numpy as np, distree\n"
                f"m = distree.load({str(trained_export)!r})\n"
                f"x = np.load({str(tmp_path / 'images.npy')!r})\n"
                "print(json.dumps([[a.prediction, a.exit, a.macs, a.branches] for a in m.infer(x)]))",
            ],
            capture_output=True,
        )
        assert local.returncode == 0, local.stderr.decode()
    assert json.loads(local.stdout) == [[a.prediction, a.exit, a.macs, a.branches] for a in served]
    assert len({a.exit for a in served}) > 1  # the policy decided something
    assert "not in this install" not in (tmp_path / "board-coordinator.log").read_text()


def test_cluster_check_compares_an_export_fingerprints_and_names_a_stale_worker(trained, trained_export, tmp_path):
    """A worker serving other weights than the export's fails the check by name."""
    run, _ = trained
    manifest = read_manifest(trained_export)
    assert manifest.branch_fingerprints  # what the check compares against
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        workers = cluster.start_workers(RUNTIME_BRANCHES, extra=["--backend", "onnxruntime"], source=trained_export)
        stale = tmp_path / "stale-export"
        shutil.copytree(trained_export, stale, dirs_exist_ok=True)
        data = json.loads((stale / "manifest.json").read_text())
        data["branch_fingerprints"][1] = "0" * len(data["branch_fingerprints"][1])
        (stale / "manifest.json").write_text(json.dumps(data))
        entries = "".join(f'  - {{name: board{b}, address: "{a}", branch: {b}}}\n' for b, a in enumerate(workers))
        cluster_file = tmp_path / "cluster.yaml"
        cluster_file.write_text(f"export: {stale}\ncoordinator: {{backend: onnxruntime}}\nworkers:\n{entries}")
        check = subprocess.run(
            [sys.executable, "-m", "distree", "cluster", "check", str(cluster_file)], capture_output=True, text=True
        )
    assert check.returncode == 1
    assert "failing: board1" in check.stdout and "other weights" in check.stdout
