"""A board's worker: `distree worker --backend onnxruntime` serving an export in a process
where torch cannot be imported, behind an ordinary coordinator."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import RUNTIME_BRANCHES

from distree.devtools.cluster import LocalCluster
from distree.export.onnx_export import export_onnx
from distree.runtime.client import DistreeClient


@pytest.fixture
def no_torch(tmp_path):
    """A directory that, first on PYTHONPATH, makes `import torch` fail."""
    blocker = tmp_path / "no-torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text('raise ImportError("torch is not installed on this board")\n')
    return blocker


def test_the_blocker_blocks(no_torch):
    probe = [sys.executable, "-c", "import torch"]
    proc = subprocess.run(probe, env={"PYTHONPATH": str(no_torch)}, capture_output=True, text=True)
    assert proc.returncode != 0 and "not installed on this board" in proc.stderr


def test_version_and_help_do_not_import_torch(no_torch):
    for argv in (["--version"], ["--help"], ["worker", "--help"]):
        cmd = [sys.executable, "-m", "distree", *argv]
        proc = subprocess.run(cmd, env={"PYTHONPATH": str(no_torch)}, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_onnxruntime_workers_without_torch_serve_a_torch_coordinator(trained, tmp_path, no_torch):
    run, splits = trained
    export = tmp_path / "export"
    export_onnx(run, export)
    board = lambda b: ("127.0.0.1", ["env", f"PYTHONPATH={no_torch}"])  # noqa: E731
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
    assert "not installed on this board" not in (tmp_path / "worker0.log").read_text()


def test_the_client_needs_no_torch(trained, tmp_path, no_torch):
    run, splits = trained
    images = tmp_path / "images.npy"
    np.save(images, splits.test.images[:2].numpy())
    with LocalCluster(run.path, log_dir=tmp_path) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES)
        coordinator = cluster.start_coordinator()
        script = (
            "import sys, numpy as np\n"
            "from distree.runtime.client import DistreeClient\n"
            f"with DistreeClient({coordinator!r}, timeout_s=30) as c:\n"
            f"    print(len(c.infer(np.load({str(images)!r}))))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], env={"PYTHONPATH": str(no_torch)}, capture_output=True, text=True
        )
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
