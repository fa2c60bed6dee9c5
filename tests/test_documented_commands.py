"""Every shell command shown in a ``sh`` block of README.md and docs/ still works as
written, and every cluster file they show is valid. (Commands quoted inline in the text
are not collected.)

Each command is checked by what it runs:

- ``distree ...``: parsed by distree's own parser, its synopsis placeholders (``RUN_DIR``,
  ``HOST:PORT``, ``[optional]`` groups, ``a|b`` choices) filled in, so a renamed or
  removed option fails here; a config, scenario, model or script it names must exist
  and configs and scenarios must validate. ``--plugin my_policies`` loads the plug-in
  module docs/policies.md shows.
- ``make TARGET``: the target exists (``make -n``).
- ``python bench/...``: the script exists and its ``--help`` runs.
- ``python -c``: runs.
- ``torchrun ... -m distree ...``: torchrun's own parser, then distree's.
- ``docker``, ``rsync``, ``ssh``, ``chmod``: not distree's; what they name in the
  repository (Dockerfile targets, compose files) must exist.

The commands themselves run end to end in the tests of each command (tests/cli,
tests/runtime, tests/simulation, tests/export, tests/training); ``distree policies`` and
the results table run here as written.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import policy_registry_kept

from distree.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"```(?:sh|bash|shell)\n(.*?)```", re.DOTALL)
#: Programs that are not distree's, and why they are not run here.
NOT_OURS = {
    "docker": "needs a Docker daemon",
    "rsync": "copies to a board",
    "ssh": "runs on a board",
    "chmod": "a file mode",
}
#: Synopsis placeholders and what fills them for parsing.
PLACEHOLDERS = {
    "RUN_DIR": "models/fashion-mnist",
    "EXPORT_DIR": "export",
    "RUN_OR_EXPORT": "models/fashion-mnist",
    "SCENARIO.yaml": "scenarios/four-boards-wifi.yaml",
    "scenario.yaml": "scenarios/four-boards-wifi.yaml",
    "HOST:PORT,...": "127.0.0.1:50061,127.0.0.1:50062",
    "HOST:PORT": "127.0.0.1:50061",
    "PATH": "data",
    "DATA": "data",
    "FILE": "out.json",
    "DIR": "out",
    "RUN": "run",
    "NAME": "max-prob",
    "MODULE": "my_policies",
    "FRACTION": "0.5",
    "PP": "0.5",
    "MIN": "5",
    "N": "2",
    "K": "0",
    "k": "0",
    "C": "0.9",
    "T": "token",
    "F": "token-file",
    "CA": "ca.pem",
    "V1,V2,...": "1,2",
    "KEY=VALUE": "student.embed_dim=64",
    "IMAGE|FOLDER": "frame.png",
    "NODE_RANK": "0",
    "HOST:29500": "127.0.0.1:29500",
    "...": "",
}


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every command line in a shell block of the README and docs:
    continuation lines joined, comments and prompts dropped."""
    out = []
    for doc in DOCS:
        for block in SHELL_BLOCK.findall(doc.read_text()):
            for raw in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+#.*$", "", raw).strip()
                if line and not line.startswith("#"):
                    out.append((doc.relative_to(ROOT).as_posix(), " ".join(line.split())))
    return out


COMMANDS = documented_commands()


def _fill(words: list[str]) -> list[str]:
    """A synopsis as one concrete command: every optional group kept, the first of each
    choice taken, placeholders filled."""
    text = " ".join(words)
    text = re.sub(r"\(([^()|]*?)\s*\|[^()]*\)", r"\1", text)  # (a | b): a
    text = text.replace("[", " ").replace("]", " ")
    out = []
    for word in text.split():
        filled = PLACEHOLDERS.get(word, word)
        if word not in PLACEHOLDERS and "|" in word and not word.startswith("-"):
            filled = word.split("|")[0]  # lockstep|eager: lockstep
        if filled:
            out.append(filled)
    return out


def _check_paths(argv: list[str]) -> None:
    """Repository files a command names exist; configs and scenarios validate."""
    from distree.config import load_run_config
    from distree.simulation.scenario import load_scenario

    for word in argv:
        path = ROOT / word
        if word.startswith("configs/"):
            load_run_config(path, [])
        elif word.startswith("scenarios/"):
            load_scenario(path)
        elif word.startswith(("models/", "bench/", "deploy/")) and not word.startswith("deploy/export"):
            assert path.exists(), f"{word} is not in the repository"


@pytest.fixture
def doc_plugin(tmp_path, monkeypatch):
    """docs/policies.md's plug-in module, written as shown, importable; forgotten after."""
    text = (ROOT / "docs" / "policies.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if b.startswith("# my_policies.py")]
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "my_policies.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path / "plugin"))
    with policy_registry_kept("my_policies"):
        yield


def _parses(where: str, argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as done:
        if done.code:
            pytest.fail(f"{where}: distree {shlex.join(argv)} does not parse")


def test_the_cluster_files_the_docs_show_are_valid():
    import yaml

    from distree.config import parse_config
    from distree.runtime.cluster import ClusterFile

    shown = [
        (doc, block)
        for doc in DOCS
        for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.DOTALL)
        if block.startswith("# cluster.yaml")
    ]
    assert shown
    for doc, block in shown:
        parse_config(ClusterFile, yaml.safe_load(block), str(doc))


def test_the_docs_show_commands():
    programs = {shlex.split(c)[0] for _, c in COMMANDS}
    assert {"distree", "make"} <= programs


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_a_documented_command_works_as_written(where, command, doc_plugin, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    words = shlex.split(command.split(" > ")[0])
    program = words[0]
    if program == "distree":
        argv = _fill(words[1:])
        if argv[:2] == ["--plugin", "my_policies"] and argv[2:3] == ["COMMAND"]:
            argv = [*argv[:2], "policies"]  # the synopsis of --plugin itself
        if argv[:2] == ["--plugin", "my_policies"]:
            from distree.policies.registry import load_plugins

            load_plugins(["my_policies"])
        _parses(where, argv)
        _check_paths(argv)
        if argv[-1:] == ["policies"]:  # cheap enough to run as written
            assert main(argv) == 0
            assert "max-prob" in capsys.readouterr().out
    elif program == "make":
        target = words[1]
        done = subprocess.run(["make", "-n", "-C", str(ROOT), *words[1:]], capture_output=True, text=True)
        assert done.returncode == 0, f"{where}: make {target}: {done.stderr}"
    elif program == "python" and words[1] == "-c":
        done = subprocess.run([sys.executable, "-c", words[2]], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    elif program == "python":
        script = ROOT / words[1]
        assert script.is_file(), f"{where}: {words[1]} is not in the repository"
        if script.name == "results_table.py":  # reads committed JSON only: run as written
            done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, cwd=ROOT)
            assert done.returncode == 0 and "|" in done.stdout, done.stderr
        else:
            done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
            assert done.returncode == 0, f"{where}: {words[1]} --help: {done.stderr}"
        _check_paths([w for w in words[2:] if not w.startswith("runs/")])
    elif program == "torchrun":
        from torch.distributed.run import get_args_parser

        filled = _fill(words[1:])
        module = filled.index("-m")
        get_args_parser().parse_args(filled[: module + 2])
        assert filled[module + 1] == "distree"
        _parses(where, filled[module + 2 :])
        _check_paths(filled)
    elif program in NOT_OURS:
        if program == "docker" and "--target" in words:
            target = words[words.index("--target") + 1]
            assert re.search(rf"^FROM \S+ AS {target}$", (ROOT / "Dockerfile").read_text(), re.MULTILINE), target
        if program == "docker" and "-f" in words:
            assert (ROOT / words[words.index("-f") + 1]).is_file()
    else:
        pytest.fail(f"{where}: no check for {program!r} commands: add one to this test")
