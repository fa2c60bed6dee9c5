"""Each install role (pyproject's extras) runs its commands with only what it installs: in
processes where importing what the role lacks fails. What pip would install per role is
checked by .ci/check_install_roles.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NOT_ON_A_BOARD, NOT_ON_A_COORDINATOR, RUNTIME_BRANCHES, missing_modules
from servers import ThreadCluster


def _python(args, pythonpath, **kw):
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, **kw)


def test_the_blocker_blocks(board_only):
    script = (
        "import importlib\n"
        f"for name in {NOT_ON_A_BOARD!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as err:\n"
        "        assert 'not in this install' in str(err), err\n"
        "    else:\n"
        "        raise SystemExit(f'{name} was imported')\n"
    )
    proc = _python(["-c", script], board_only)
    assert proc.returncode == 0, proc.stderr


def test_version_and_help_need_only_the_core(client_only):
    for argv in (["--version"], ["--help"], ["worker", "--help"], ["serve", "--help"], ["export", "--help"]):
        proc = _python(["-m", "distree", *argv], client_only)
        assert proc.returncode == 0, proc.stderr


def test_the_client_needs_only_the_core(trained, tmp_path, client_only):
    run, splits = trained
    images = tmp_path / "images.npy"
    np.save(images, splits.test.images[:2].numpy())
    with ThreadCluster(run.path) as cluster:
        cluster.start_workers(RUNTIME_BRANCHES)
        coordinator = cluster.start_coordinator()
        script = (
            "import sys, numpy as np\n"
            "from distree.runtime.client import DistreeClient\n"
            f"with DistreeClient({coordinator!r}, timeout_s=30) as c:\n"
            f"    print(len(c.infer(np.load({str(images)!r}))))\n"
        )
        proc = _python(["-c", script], client_only)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr


@pytest.mark.e2e
def test_a_coordinator_and_torch_workers_need_only_the_torch_extra(trained, tmp_path):
    """`distree demo` starts torch workers, coordinators and the load generator, each its
    own process, all under the same PYTHONPATH: distree[torch] without plots, SimPy or ONNX."""
    run, _ = trained
    blocked = missing_modules(tmp_path / "coordinator", NOT_ON_A_COORDINATOR)
    out = tmp_path / "demo.json"
    data = Path(run.path).parent / "data"
    argv = ["demo", "--run-dir", str(run.path), "--data", str(data), "--limit", "8", "--policy", "max-prob"]
    proc = _python(["-m", "distree", *argv, "--json", str(out)], blocked, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["runs"]["max-prob"]["answered"] == 8
