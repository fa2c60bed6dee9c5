"""A policy defined in a user's own module, registered without touching distree, runs in
``calibrate``, ``eval``, ``serve`` (on the run, and on its export without torch) and
``simulate``, and a process distree starts loads it from ``$DISTREE_PLUGINS``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
from conftest import policy_registry_kept
from servers import ThreadCluster

from distree.cli.main import main
from distree.export.onnx_export import export_onnx
from distree.run import RunDir
from distree.runtime.client import DistreeClient
from distree.runtime.coordinator import CoordinatorOptions

USER_MODULE = '''
from distree.arrays import namespace
from distree.policies import ExitPolicy, register_policy
from distree.policies.scores import softmax


@register_policy
class Margin(ExitPolicy):
    """The gap between the two most probable classes."""

    name = "user-margin"

    def score(self, e, seen):
        # Torch tensors where the heads run in PyTorch, numpy arrays on a coordinator that
        # serves an export: array API functions (namespace) take either.
        xp = namespace(seen.logits[e])
        p = xp.sort(softmax(seen.logits[e]), axis=-1)
        return p[:, -1] - p[:, -2]
'''

SCENARIO = """
name: tiny
devices:
  - {name: a, macs_per_s: 1.0e9}
  - {name: b, macs_per_s: 1.0e9}
  - {name: c, macs_per_s: 1.0e9}
link: {bandwidth_mbps: 100, rtt_ms: 1}
arrivals: {trace: [%s]}
requests: %d
policies: [user-margin]
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's module importable here; distree's policy registry as it was afterwards."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_policies.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mine"))
    with policy_registry_kept("my_policies"):
        yield tmp_path / "mine"


@pytest.mark.slow  # calibrate, eval, an export and a simulation
def test_a_users_policy_is_calibrated_evaluated_served_and_simulated(trained, tmp_path, user_module, capsys):
    src, splits = trained
    run = tmp_path / "run"
    shutil.copytree(src.path, run)  # calibrate writes into the run: keep the shared one as it is
    data = ["--data", splits.source]
    plugin = ["--plugin", "my_policies"]

    # 1: a target not met for some count of branches on this tiny set, which is no matter here
    assert main([*plugin, "calibrate", str(run), *data, "--budget", "0.6", "--policy", "user-margin"]) in (0, 1)
    assert "user-margin" in capsys.readouterr().out
    saved = json.loads((run / "calibration.json").read_text())
    assert "user-margin" in saved["policies"] and "max-prob" in saved["policies"]  # the others are kept

    assert main([*plugin, "eval", str(run), *data, "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["policies"]["user-margin"]
    histogram = evaluated["exit_histogram"]
    assert sum(histogram) == len(splits.test) and histogram[0] > 0  # it stops early on some inputs

    # Served on the run, and on its export, where the score gets numpy arrays, not torch tensors.
    export_onnx(RunDir(run), tmp_path / "export")
    with ThreadCluster(run) as cluster:
        cluster.start_workers(3)
        address = cluster.start_coordinator(CoordinatorOptions(policy="user-margin"))
        on_export = cluster.start_coordinator(CoordinatorOptions(policy="user-margin"), export=tmp_path / "export")
        with DistreeClient(address) as client, DistreeClient(on_export) as board:
            assert client.model_info().policy == "user-margin"
            answers = client.infer(splits.test.images)
            board_answers = board.infer(splits.test.images)
    served = Counter(a.exit for a in answers)
    assert [served[e] for e in range(len(histogram))] == histogram
    assert [a.exit for a in board_answers] == [a.exit for a in answers]

    n = len(splits.test)
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(SCENARIO % (", ".join(str(10.0 * i) for i in range(n)), n))
    assert main([*plugin, "simulate", str(scenario), str(run), *data, "--json", str(tmp_path / "sim.json")]) == 0
    simulated = json.loads((tmp_path / "sim.json").read_text())["results"]["distree-user-margin"]
    assert simulated["exit_histogram"] == histogram
    assert simulated["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-4)  # eval rounds to 4 places


@pytest.mark.e2e
def test_a_process_distree_starts_loads_the_plugins_of_its_environment(user_module):
    """What a coordinator or worker that ``distree demo`` starts does: the module named in
    ``$DISTREE_PLUGINS`` is imported and its policy chosen by name."""
    env = dict(os.environ, DISTREE_PLUGINS="my_policies", PYTHONPATH=str(user_module))
    proc = subprocess.run([sys.executable, "-m", "distree", "policies"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:1] == ["user-margin"] for line in proc.stdout.splitlines()), proc.stdout


@pytest.mark.e2e
def test_an_unknown_plugin_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "distree", "--plugin", "no_such_module_here", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "policy plugin 'no_such_module_here' could not be imported" in proc.stderr
