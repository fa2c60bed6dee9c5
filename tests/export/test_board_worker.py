"""A board's worker: `distree worker --backend onnxruntime` serving an export in a process
where torch cannot be imported, behind an ordinary coordinator."""

from __future__ import annotations

import pytest
import torch
from conftest import RUNTIME_BRANCHES

from distree.export.onnx_export import export_onnx
from distree.launch.local import LocalCluster
from distree.runtime.client import DistreeClient

pytestmark = pytest.mark.e2e  # real processes: workers in a board's install, without torch


def test_onnxruntime_workers_without_torch_serve_a_torch_coordinator(trained, tmp_path, board_only):
    run, splits = trained
    export = tmp_path / "export"
    export_onnx(run, export)
    board = lambda b: ("127.0.0.1", ["env", f"PYTHONPATH={board_only}"])  # noqa: E731
    images = splits.test.images[:8]
    with LocalCluster(run.path, log_dir=tmp_path, placement=board) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES, extra=["--backend", "onnxruntime"], source=export)
        coordinator = cluster.start_coordinator(extra=["--policy", "full"])
        with DistreeClient(coordinator, timeout_s=30) as client:
            answers = client.infer(images)
    assert all(a.branches == list(range(RUNTIME_BRANCHES)) for a in answers)  # every board's branch was fused
    student = run.load_student().eval()
    with torch.no_grad():
        expected = student(run.meta.data.normalization(images))[-1].logits.argmax(-1)
    assert [a.prediction for a in answers] == expected.tolist()
    assert "not in this install" not in (tmp_path / "worker0.log").read_text()


def test_a_cluster_without_torch_answers_as_the_torch_coordinator(trained, tmp_path, board_only):
    """Workers and coordinator all on an export, in processes where torch cannot be
    imported: the coordinator fuses with the exported heads (onnxruntime) and decides with
    the run's calibration shipped in the export. A torch coordinator over the same workers
    gives the same exits, predictions, branches and MACs, for a policy that reads the
    fused embeddings (lockstep) and for one that reads the branches' agreement (eager)."""
    run, splits = trained
    export = tmp_path / "export"
    manifest = export_onnx(run, export)
    assert manifest.calibration == "calibration.json"
    board = ["env", f"PYTHONPATH={board_only}"]
    images = splits.test.images[:24]
    policies = {"conf-then-feature-diff": "lockstep", "feature-agreement": "eager"}  # policy -> mode
    with LocalCluster(run.path, log_dir=tmp_path, placement=lambda b: ("127.0.0.1", board)) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES, extra=["--backend", "onnxruntime"], source=export)
        answers = {}
        for policy, mode in policies.items():
            for backend in ("torch", "onnxruntime"):
                name = f"{backend}-{policy}"
                on_board = backend == "onnxruntime"
                address = cluster.start_coordinator(
                    name,
                    extra=["--backend", backend, "--policy", policy, "--mode", mode],
                    source=export if on_board else None,
                    prefix=board if on_board else (),
                )
                with DistreeClient(address, timeout_s=30) as client:
                    answers[backend, policy] = client.infer(images)
    for policy in policies:
        torch_side, board_side = answers["torch", policy], answers["onnxruntime", policy]
        assert [a.exit for a in board_side] == [a.exit for a in torch_side], policy
        assert len({a.exit for a in board_side}) > 1, f"{policy}: every input left at one exit; nothing was decided"
        for a, b in zip(board_side, torch_side):
            assert (a.prediction, a.branches, a.macs) == (b.prediction, b.branches, b.macs)
            torch.testing.assert_close(torch.tensor(a.probabilities), torch.tensor(b.probabilities), atol=1e-4, rtol=0)
    for policy in policies:
        assert "not in this install" not in (tmp_path / f"onnxruntime-{policy}.log").read_text()
