"""The import rule of docs/design.md, and no policy tested by its name outside distree.policies."""

from __future__ import annotations

import ast
from pathlib import Path

from distree.policies import policy_names

SRC = Path(__file__).resolve().parents[1] / "src" / "distree"
BENCH = Path(__file__).resolve().parents[1] / "bench"

#: Bottom to top. A package may import its own modules and those of lower layers only;
#: packages of one layer never import each other.
LAYERS = [
    {"defaults"},  # plain constants the command line reads (no pydantic, no yaml): below config
    {"config", "hardware", "weights", "tables", "images", "provenance", "arrays", "answer"},
    {"exits"},
    {"data", "models"},
    {"policies"},
    {"run"},
    {"inference"},
    {"export"},  # an export runs in this process through the inference loop (``load_export``)
    {"evaluation"},
    {"training", "runtime", "simulation"},
    {"launch"},
    {"cli"},
]
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(path: Path) -> str | None:
    rel = path.relative_to(SRC).parts
    name = rel[0].removesuffix(".py")
    return None if name in ("__init__", "__main__") else name


def _imports(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distree."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("distree.")}
    return out


#: Below in the layers, yet not for these: a board's worker and coordinator need the model
#: and its run, nothing that trains or evaluates (scipy, matplotlib, the training loop).
NEVER_IMPORTED_BY = {"runtime": {"training", "evaluation"}}


def test_the_runtime_stands_on_neither_training_nor_evaluation():
    bad = []
    for pkg, banned in NEVER_IMPORTED_BY.items():
        for path in sorted((SRC / pkg).rglob("*.py")):
            if "proto" in path.parts:
                continue
            found = _imports(ast.parse(path.read_text())) & banned
            bad += [f"{path.relative_to(SRC)} imports distree.{m}" for m in sorted(found)]
    assert not bad, "\n".join(bad)


def test_every_package_has_a_layer():
    packages = {_package(p) for p in SRC.rglob("*.py")} - {None}
    assert packages <= set(LAYER_OF), sorted(packages - set(LAYER_OF))


def test_no_package_imports_a_higher_layer_or_a_peer():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        pkg = _package(path)
        if pkg is None or "proto" in path.parts:
            continue
        for imported in _imports(ast.parse(path.read_text())):
            if imported != pkg and imported in LAYER_OF and LAYER_OF[imported] >= LAYER_OF[pkg]:
                bad.append(f"{path.relative_to(SRC)} imports distree.{imported}")
    assert not bad, "\n".join(bad)


def _name_tests(path: Path, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            consts = [c for o in operands for c in ([o] if isinstance(o, ast.Constant) else getattr(o, "elts", []))]
            hits = {c.value for c in consts if isinstance(c, ast.Constant) and c.value in names}
            if hits:
                found.append(f"{path}:{node.lineno} compares with {sorted(hits)}")
    return found


def test_nothing_outside_the_policy_package_tests_a_policy_by_its_name():
    names = set(policy_names())
    files = [p for p in SRC.rglob("*.py") if "policies" not in p.relative_to(SRC).parts] + sorted(BENCH.rglob("*.py"))
    found = [hit for p in files for hit in _name_tests(p, names)]
    assert not found, "\n".join(found)


def test_the_name_test_check_finds_a_name_test(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('if policy == "full" or p in ("oracle", "x"):\n    pass\n')
    assert len(_name_tests(f, set(policy_names()))) == 2


#: What no command-line module imports: a command parses its arguments and calls the product,
#: which starts processes (subprocess, multiprocessing, LocalCluster) and computes (torch, numpy).
NOT_IN_THE_CLI = {"torch", "numpy", "subprocess", "multiprocessing", "distree.launch.local"}


def _all_imports(tree: ast.AST) -> set[str]:
    """Every module imported anywhere in ``tree``, functions included, with its parents."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # from distree.launch import local
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def test_the_cli_neither_starts_processes_nor_computes():
    bad = []
    for path in sorted((SRC / "cli").rglob("*.py")):
        found = _all_imports(ast.parse(path.read_text())) & NOT_IN_THE_CLI
        bad += [f"{path.relative_to(SRC)} imports {m}" for m in sorted(found)]
    assert not bad, "\n".join(bad)


def test_the_cli_check_finds_an_import_inside_a_function(tmp_path):
    tree = ast.parse("def cmd():\n    from distree.launch import local\n    import torch.nn\n")
    assert _all_imports(tree) & NOT_IN_THE_CLI == {"distree.launch.local", "torch"}
