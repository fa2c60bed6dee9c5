"""The README's Python examples run as written (from the repository root), the client's
against the shipped Fashion-MNIST model served here, its address in place of localhost:50051."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from distree.policies import DEFAULT_POLICY

ROOT = Path(__file__).parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_the_readme_has_its_python_examples():
    assert len(BLOCKS) >= 2
    assert any("distree.load" in b for b in BLOCKS) and any("DistreeClient" in b for b in BLOCKS)


def test_the_readme_python_examples_run(fmnist_cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    address = fmnist_cluster[DEFAULT_POLICY]
    for name in ("frame-0001.png", "frame-0002.png"):  # what the client example reads
        Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(tmp_path / name)
    for block in BLOCKS:
        code = block.replace("localhost:50051", address)
        if "frame-000" in code:
            code = code.replace('"frame-', f'"{tmp_path}{os.sep}frame-')
        exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(line.split()[0] for line in printed)
