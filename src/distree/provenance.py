"""What made a result: the distree release, the source commit when it runs from a git
checkout, the command line, and the main libraries' versions. run.json and every result
JSON the command line writes carry it, so a figure can be traced to what produced it.

``provenance_dict`` needs nothing but the standard library: a client's install (no
pydantic) writes it with ``distree infer --json``. ``Provenance``, the pydantic model that
run.json and the evaluations validate it with, needs distree[serve]."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from distree import __version__

_LIBRARIES = ("torch", "onnxruntime", "grpcio", "numpy")

try:
    from pydantic import BaseModel, ConfigDict
except ModuleNotFoundError as missing:  # a client's install (no distree[serve]): provenance_dict() only
    _NO_PYDANTIC = missing

    def __getattr__(name: str) -> Any:
        # `from distree.provenance import Provenance` fails naming pydantic, so that the
        # command line says which install has it (PEP 562).
        if name == "Provenance":
            raise _NO_PYDANTIC
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

else:

    class Provenance(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        distree: str
        git_commit: str | None = None  # with "-dirty" when the checkout has uncommitted changes
        command: list[str]
        python: str
        libraries: dict[str, str]  # those installed, of torch, onnxruntime, grpcio, numpy
        machine: str
        created: str  # UTC, ISO 8601


def machine() -> str:
    """This machine in one line: architecture, CPU count and model, OS and kernel. Every
    figure distree writes (provenance, the demo, the benches) names its machine this way."""
    cpu = platform.processor() or ""
    try:  # platform.processor() is often empty or just the architecture on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = f"{os.cpu_count()} CPUs" + (f" ({cpu})" if cpu and cpu != platform.machine() else "")
    return f"{platform.machine()}, {cpus}, {platform.system()} {platform.release()}"


def _git_commit() -> str | None:
    """The checkout's commit, when distree runs from one (an editable install)."""
    src = Path(__file__).resolve().parent
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=5, check=True
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def provenance_dict(command: list[str] | None = None) -> dict[str, Any]:
    """This process's provenance as plain JSON values, the fields of ``Provenance``;
    ``command`` is the command line (default ``sys.argv``)."""
    libraries = {}
    for name in _LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            libraries[name] = metadata.version(name)
    return {
        "distree": __version__,
        "git_commit": _git_commit(),
        "command": list(command if command is not None else sys.argv),
        "python": platform.python_version(),
        "libraries": libraries,
        "machine": machine(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def provenance(command: list[str] | None = None) -> Provenance:
    """This process's provenance, validated (pydantic); ``command`` is the command line (default ``sys.argv``)."""
    if "Provenance" not in globals():
        raise _NO_PYDANTIC
    return Provenance(**provenance_dict(command))
