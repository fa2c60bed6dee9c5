"""A board's worker: `distree worker --backend onnxruntime` serving an export in a process
where torch cannot be imported, behind an ordinary coordinator."""

from __future__ import annotations

import torch
from conftest import RUNTIME_BRANCHES

from distree.devtools.cluster import LocalCluster
from distree.export.onnx_export import export_onnx
from distree.runtime.client import DistreeClient


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
