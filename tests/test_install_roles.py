"""Each install role (pyproject's extras) runs its commands with only what it installs: in
processes where importing what the role lacks fails. What pip would install per role is
checked by .ci/check_install_roles.py; a board's role by tests/export/test_board_worker.py,
a coordinator's by the demo's test (tests/cli/test_runtime_commands.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import NOT_ON_A_BOARD, RUNTIME_BRANCHES
from servers import ThreadCluster


def _python(args, pythonpath, **kw):
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, **kw)


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_version_and_help_need_only_the_core(client_only):
    for argv in (["--version"], ["--help"], ["worker", "--help"], ["serve", "--help"], ["export", "--help"]):
        proc = _python(["-m", "distree", *argv], client_only)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.e2e
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
