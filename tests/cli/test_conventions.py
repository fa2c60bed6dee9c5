"""Command-line conventions: every option has help that shows its default, and the exit
statuses docs/cli.md documents."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import distree
from distree.cli.args import DistreeParser
from distree.cli.main import EXIT_FAILED, EXIT_USAGE, build_parser, main


def _options(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                assert isinstance(sub, DistreeParser), name
                yield from _options(sub, (*prefix, name))
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            yield " ".join(prefix), action, parser


def test_every_option_has_help_and_shows_its_default():
    missing, hidden = [], []
    for command, action, parser in _options(build_parser()):
        name = "/".join(action.option_strings) or action.dest
        if not action.help:
            missing.append(f"{command} {name}")
        d = action.default
        shown = d is None or d is False or d == [] or d is argparse.SUPPRESS or not action.option_strings
        if not shown and "default" not in parser.formatter_class(prog="x")._get_help_string(action):
            hidden.append(f"{command} {name}")
    assert not missing, f"options without help: {missing}"
    assert not hidden, f"defaults not shown: {hidden}"


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    assert "(default 128)" in " ".join(capsys.readouterr().out.split())  # --max-batch


def test_exit_statuses(tmp_path, capsys):
    assert main(["cluster", "check", str(tmp_path / "nope.yaml")]) == EXIT_USAGE == 2  # a path that is not there
    bad = tmp_path / "c.yaml"
    bad.write_text("run: r\nworkers: [{name: a, address: nohost, branch: 0}]\n")
    assert main(["cluster", "check", str(bad), "--skip-weights"]) == EXIT_USAGE  # a bad field
    assert "not HOST:PORT" in capsys.readouterr().err
    down = tmp_path / "down.yaml"
    down.write_text("run: r\nworkers: [{name: a, address: '127.0.0.1:9', branch: 0}]\n")
    assert main(["cluster", "check", str(down), "--skip-weights", "--timeout-s", "0.5"]) == EXIT_FAILED == 1
    out = tmp_path / "check.json"
    assert main(["cluster", "check", str(down), "--skip-weights", "--timeout-s", "0.5", "--json", str(out)]) == 1
    made = json.loads(out.read_text())["provenance"]  # every result JSON says what made it
    assert made["command"][:3] == ["distree", "cluster", "check"] and made["distree"] == distree.__version__
    assert made["git_commit"] is None or len(made["git_commit"].removesuffix("-dirty")) == 40
    with pytest.raises(SystemExit) as usage:
        main(["serve", "--no-such-flag"])
    assert usage.value.code == EXIT_USAGE


def test_shipped_defaults_work_from_any_directory(tmp_path, monkeypatch):
    from distree.cli.args import shipped

    monkeypatch.chdir(tmp_path)
    assert Path(shipped("models/cifar10"), "run.json").is_file()
    assert Path(shipped("scenarios/four-boards-wifi.yaml")).is_file()
    (tmp_path / "models" / "cifar10").mkdir(parents=True)  # one here wins
    assert shipped("models/cifar10") == "models/cifar10"
    with pytest.raises(FileNotFoundError, match="give its path"):
        shipped("models/none")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["worker", "RUN", "--branch", "0", "--metrics-port", "70000"],
            "--metrics-port: must be a port number 1..65535",
        ),
        (["worker", "RUN", "--branch", "-1"], "--branch: must be at least 0"),
        (["serve", "RUN", "--max-groups", "0"], "--max-groups: must be at least 1"),
        (["serve", "RUN", "--stage-timeout-ms", "0"], "--stage-timeout-ms: must be above 0"),
        (["infer", "--server", "h:1", "--deadline-ms", "nan"], "--deadline-ms: expected a finite number"),
        (["train", "--out", "R", "--epochs", "2.5"], "--epochs: expected an integer"),
        (["calibrate", "RUN", "--max-drop", "0.5", "--confidence", "1.5"], "--confidence: must be 0.0..1.0"),
    ],
)
def test_numbers_out_of_range_are_refused_before_anything_runs(argv, said, capsys):
    from distree.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert said in capsys.readouterr().err
