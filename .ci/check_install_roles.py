"""What each install role pulls in, resolved by pip without installing anything, what the
wheel ships, and that the sdist holds what its tests read.

A board's worker or coordinator ('distree[onnx]') and a client (the core) must not pull in torch or the
training, plotting and simulation stack, and a client nothing a server needs ('distree[serve]': pydantic,
PyYAML, prometheus-client); pip's own resolver, asked with --dry-run --report, says what an install would
bring. Run from the repository root: python .ci/check_install_roles.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HEAVY = {"torch", "safetensors", "matplotlib", "simpy", "pillow", "tqdm", "scipy", "triton"}
#: What a server needs and a client does not ('distree[serve]').
SERVER = {"pydantic", "pydantic-core", "pyyaml", "prometheus-client", "array-api-compat"}
#: install target -> distributions it must not resolve to
ROLES = {
    ".": HEAVY | SERVER | {"onnxruntime", "onnx"},  # a client
    ".[onnx]": HEAVY | {"onnx"},  # a board's worker or coordinator
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(target: str) -> dict[str, str]:
    """name -> version of every distribution ``pip install target`` would install."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        subprocess.run([*cmd, "--report", str(report), target], check=True)
        items = json.loads(report.read_text())["install"]
    return {_canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in items}


#: What the wheel must hold besides the code: the license, the protocol's source, the
#: mark that the package is typed.
WHEEL_FILES = ("distree/py.typed", "distree/runtime/proto/distree.proto", "licenses/LICENSE")


def check_wheel() -> list[str]:
    """The files of WHEEL_FILES missing from a wheel built from this checkout."""
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "--wheel-dir", tmp]
        subprocess.run(cmd, check=True)
        (wheel,) = Path(tmp).glob("distree-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
    print(f"wheel {wheel.name}: {len(names)} files", flush=True)
    return [f for f in WHEEL_FILES if not any(n.endswith(f) for n in names)]


#: What the sdist must hold for its tests to run (MANIFEST.in): the fixtures, the shipped run they serve.
SDIST_FILES = ("tests/conftest.py", "tests/servers.py", "models/fashion-mnist/run.json", "docs/policies.md")


def check_sdist() -> list[str]:
    """The files of SDIST_FILES missing from an sdist built from this checkout: by
    ``setuptools.build_meta.build_sdist``, as a build front end runs it (the build-system's
    requirements in a folder of their own, not this Python's setuptools)."""
    import tarfile

    requires = json.loads(re.search(r"^requires = (\[.*\])$", Path("pyproject.toml").read_text(), re.MULTILINE)[1])
    with tempfile.TemporaryDirectory() as tmp:
        backend = Path(tmp) / "backend"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(backend), *requires]
        subprocess.run(cmd, check=True)
        build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
        proc = subprocess.run(
            [sys.executable, "-S", "-c", build, tmp],  # -S: none of this Python's site-packages
            env={**os.environ, "PYTHONPATH": str(backend)},
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            print(proc.stdout + proc.stderr, flush=True)
            return ["(the sdist did not build)"]
        name = proc.stdout.strip().splitlines()[-1]
        with tarfile.open(Path(tmp) / name) as sdist:
            names = sdist.getnames()
    print(f"sdist {name}: {len(names)} files", flush=True)
    return [f for f in SDIST_FILES if not any(n.split("/", 1)[-1] == f for n in names)]


def main() -> int:
    failed = False
    missing = check_wheel()
    if missing:
        print(f"  FAIL: the wheel lacks {', '.join(missing)}", flush=True)
        failed = True
    missing = check_sdist()
    if missing:
        print(f"  FAIL: the sdist lacks {', '.join(missing)}", flush=True)
        failed = True
    for target, forbidden in ROLES.items():
        got = resolve(target)
        bad = sorted(n for n in got if n in forbidden or n.startswith("nvidia-"))
        print(f"pip install '{target}': {len(got)} distributions: {', '.join(sorted(got))}", flush=True)
        if bad:
            print(f"  FAIL: pulls in {', '.join(bad)}", flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
