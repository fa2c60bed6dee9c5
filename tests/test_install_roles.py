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
    helps = [[c, "--help"] for c in ("worker", "serve", "export", "infer", "health", "sweep")]
    for argv in (["--version"], ["--help"], *helps):
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
            # what `infer --json` records, without pydantic
            "from distree.provenance import provenance_dict\n"
            "assert provenance_dict(['distree', 'infer'])['command'] == ['distree', 'infer']\n"
        )
        proc = _python(["-c", script], client_only)
        health = _python(["-m", "distree", "health", coordinator], client_only)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    assert health.returncode == 0 and health.stdout.strip().endswith("SERVING"), health.stdout + health.stderr


FMNIST = "models/fashion-mnist"
DATA = "../shared/data/fashion-mnist"
#: Commands that need more than the core, each as a client's install would run it.
NEEDS_AN_EXTRA = [
    (["train", "--data", DATA, "--out", "RUN"], "distree[torch]"),
    (["eval", FMNIST, "--data", DATA], "distree[torch]"),
    (["calibrate", FMNIST, "--data", DATA, "--max-drop", "0.5"], "distree[torch]"),
    (["quickstart", "--data", DATA, "--out", "RUN"], "distree[torch]"),
    (["export", FMNIST, "--out", "EXPORT"], "distree["),
    (["worker", FMNIST, "--branch", "0", "--listen", "127.0.0.1:0"], "distree[torch]"),
    (["serve", FMNIST, "--workers", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4"], "distree[torch]"),
    (["serve", FMNIST, "--backend", "onnxruntime", "--workers", "127.0.0.1:1,127.0.0.1:2"], "distree[onnx]"),
    (["policies"], "distree[serve]"),
    (["cluster", "check", "cluster.yaml"], "distree[serve]"),
    (["demo", "--data", DATA], "distree[torch]"),
    (["record", FMNIST, "--data", DATA], "distree["),
    (["simulate", "scenarios/four-boards-wifi.yaml", FMNIST], "distree["),
    (["report", FMNIST, "--data", DATA, "--out", "REPORT"], "distree["),
    (["infer", "--server", "127.0.0.1:1", "models/fashion-mnist/policy_curves.png"], "Pillow"),
]


def _distree_as(install, argv: list[str], tmp_path) -> subprocess.CompletedProcess:
    """``distree ARGV`` from the repository root in a process with ``install`` (a missing-
    modules folder) first on PYTHONPATH; RUN, EXPORT and REPORT become paths in ``tmp_path``."""
    from pathlib import Path

    argv = [str(tmp_path / a) if a in ("RUN", "EXPORT", "REPORT") else a for a in argv]
    return subprocess.run(
        [sys.executable, "-m", "distree", *argv],
        env={**os.environ, "PYTHONPATH": str(install)},
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )


@pytest.mark.e2e
@pytest.mark.parametrize(("argv", "needs"), NEEDS_AN_EXTRA, ids=[a[0] for a, _ in NEEDS_AN_EXTRA])
def test_a_command_a_client_install_lacks_names_the_extra_in_one_line(argv, needs, client_only, tmp_path):
    proc = _distree_as(client_only, argv, tmp_path)
    # quickstart says each step's command before running it ("$ distree train ...").
    err = [line for line in proc.stderr.strip().splitlines() if not line.startswith("$ ")]
    assert proc.returncode == 2, proc.stderr
    assert len(err) == 1 and needs in err[0], proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize(("argv", "_"), NEEDS_AN_EXTRA, ids=[a[0] for a, _ in NEEDS_AN_EXTRA])
def test_on_a_board_install_a_command_works_or_says_what_it_lacks_in_one_line(argv, _, board_only, tmp_path):
    """A board's install (distree[onnx]): each command runs, or exits 2 with one line (the
    extra it lacks, or what is wrong with its input), never a traceback."""
    proc = _distree_as(board_only, argv, tmp_path)
    err = [line for line in proc.stderr.strip().splitlines() if not line.startswith("$ ")]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2), proc.stderr
    if proc.returncode == 2:
        assert len(err) == 1 and err[0].startswith("distree ") and ": error: " in err[0], proc.stderr
