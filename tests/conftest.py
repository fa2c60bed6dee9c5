"""Shared fixtures: tiny configs and tiny generated data sets of every format."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

from distree.config import RunConfig, StudentConfig, WideResNetConfig
from distree.data import load_data
from distree.evaluation.offline import calibrate_run
from distree.policies.calibration_file import CalibrationTarget
from distree.run import RunDir
from distree.training.pipeline import train_run

#: What each install role lacks (pyproject's extras): in a process with ``missing_modules``
#: first on PYTHONPATH, importing any of them fails, as it would on such an install.
NOT_ON_A_COORDINATOR = ("matplotlib", "simpy", "onnx", "onnxscript", "onnxruntime")  # distree[torch]
# distree[onnx]:
NOT_ON_A_BOARD = ("torch", "safetensors", "scipy", "PIL", "tqdm", "matplotlib", "simpy", "onnx", "onnxscript")
# distree's core, without distree[serve]:
NOT_ON_A_CLIENT = (*NOT_ON_A_BOARD, "onnxruntime", "pydantic", "yaml", "prometheus_client", "array_api_compat")


def missing_modules(path, modules):
    """A directory of packages whose import fails, naming the role's install."""
    for name in modules:
        (path / name).mkdir(parents=True)
        # What Python raises for a module that is not installed, with a message of its own.
        (path / name / "__init__.py").write_text(
            f'raise ModuleNotFoundError("{name} is not in this install", name="{name}")\n'
        )
    return path


@contextlib.contextmanager
def policy_registry_kept(*modules: str):
    """distree's policy registry and $DISTREE_PLUGINS as they were, afterwards, and the
    plug-in ``modules`` forgotten: a test's plug-in stays out of later tests."""
    from distree.policies import registry

    env = os.environ.pop(registry.PLUGINS_ENV, None)
    saved, loaded = dict(registry._REGISTRY), set(registry._loaded)
    try:
        yield
    finally:
        # load_plugins names the module in the environment, for the processes distree starts.
        os.environ.pop(registry.PLUGINS_ENV, None)
        if env is not None:
            os.environ[registry.PLUGINS_ENV] = env
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
        registry._loaded.clear()
        registry._loaded.update(loaded)
        for m in modules:
            sys.modules.pop(m, None)


@pytest.fixture
def board_only(tmp_path):
    """PYTHONPATH for a board's install: importing anything ``distree[onnx]`` lacks fails."""
    return missing_modules(tmp_path / "board", NOT_ON_A_BOARD)


@pytest.fixture
def client_only(tmp_path):
    """PYTHONPATH for a client's install: everything but distree's core requirements fails."""
    return missing_modules(tmp_path / "client", NOT_ON_A_CLIENT)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own data cache and no $DISTREE_DATA from the environment."""
    monkeypatch.setenv("DISTREE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("DISTREE_DATA", raising=False)
    torch.manual_seed(0)


def tiny_student_config(branches: int = 2, exit_points: list[int] | None = None, depth: int = 10) -> StudentConfig:
    """A student small enough for unit tests."""
    return StudentConfig(
        branches=[WideResNetConfig(depth=depth, width=0.25) for _ in range(branches)],
        embed_dim=16,
        **({"exit_points": exit_points} if exit_points else {}),
    )


def tiny_run_config(epochs: int = 2, branches: int = 2) -> RunConfig:
    """A whole run configuration that trains in seconds on a few hundred 8x8 images."""
    return RunConfig.model_validate(
        {
            "data": {"val_fraction": 0.2, "crop_padding": 1},
            "teacher": {"depth": 10, "width": 0.5},
            "student": tiny_student_config(branches=branches).model_dump(),
            "teacher_optim": {"epochs": epochs, "batch_size": 32, "lr": 0.05},
            "student_optim": {"epochs": epochs, "batch_size": 32, "lr": 0.05},
            "eval_batch_size": 64,
        }
    )


def make_images(n: int, size: int = 8, channels: int = 3, classes: int = 3, seed: int = 0):
    """Class-dependent random uint8 images (N, H, W, C) that a tiny net can learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = rng.integers(0, 256, (classes, size, size, channels))
    noise = rng.integers(-40, 41, (n, size, size, channels))
    images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_image_folder(root, n_train=60, n_test=30, size=8, classes=3, ext="png"):
    """ROOT/{train,test}/<class>/*.ext with generated images."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = make_images(n, size, 3, classes, seed)
        for i, (im, y) in enumerate(zip(images, labels)):
            d = root / split / f"class{y}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(d / f"{i:04d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path):
    """A tiny PNG image-folder data set."""
    return write_image_folder(tmp_path / "imgs")


# Each test process computes on one thread: pytest-xdist runs one per core, and the
# servers and processes the tests start set theirs to one as well (torch's threads spin
# when processes share cores).
torch.set_num_threads(1)

RUNTIME_BRANCHES = 3
SHIPPED_FMNIST = Path(__file__).parents[1] / "models" / "fashion-mnist"


@pytest.fixture(scope="session")
def fmnist_cluster():
    """The shipped Fashion-MNIST model served in this process: {policy: coordinator address}
    for the default policy and ``max-prob``."""
    from servers import ThreadCluster

    from distree.policies import DEFAULT_POLICY
    from distree.runtime.coordinator import CoordinatorOptions

    with ThreadCluster(SHIPPED_FMNIST) as cluster:
        cluster.start_workers(4)
        policies = dict.fromkeys([DEFAULT_POLICY, "max-prob"])
        yield {p: cluster.start_coordinator(CoordinatorOptions(policy=p)) for p in policies}


@contextlib.contextmanager
def made_once(tmp_path_factory, name: str):
    """A directory that the test processes of one run (pytest-xdist's workers) share: the
    first to get here makes it inside the ``with`` (it yields True), the others wait for
    that and find it made (False)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base directories share this parent
    path = root / name
    with FileLock(str(path) + ".lock"):
        done = path / ".made"
        make = not done.is_file()
        if make:  # what a failed attempt left
            shutil.rmtree(path, ignore_errors=True)
        yield path, make
        done.parent.mkdir(parents=True, exist_ok=True)
        done.touch()


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny 3-branch run, calibrated so that early exits happen, with its simulator trace.
    Made once per test run (shared by the xdist workers): read it, do not write into it
    (copy it first)."""
    with made_once(tmp_path_factory, "trained") as (root, make):
        data = root / "data"
        if make:
            write_image_folder(data, n_train=90, n_test=60)
        splits = load_data(str(data), val_fraction=0.2)
        if make:
            torch.manual_seed(0)
            cfg = tiny_run_config(epochs=2, branches=RUNTIME_BRANCHES)
            run = train_run(root / "run", splits, cfg, torch.device("cpu"), log=lambda m: None)
            calibrate_run(run, splits, torch.device("cpu"), CalibrationTarget(budget=0.6, confidence=0.9))
            # The simulator's trace too, before any test reads the run: none writes into it.
            from distree.simulation.trace import record_trace

            record_trace(run, str(data), torch.device("cpu"), log=lambda m: None)
    return RunDir(root / "run"), splits


@pytest.fixture(scope="session")
def trained_export(trained, tmp_path_factory):
    """The ``trained`` run's ONNX export (fp32, with its calibration), made once per test
    run: read it, do not write into it."""
    from distree.export.onnx_export import export_onnx

    run, _ = trained
    with made_once(tmp_path_factory, "trained-export") as (out, make):
        if make:
            export_onnx(run, out)
    return out


def calibration_of(policies: dict[str, dict[int, list[float | None]]]):
    """A CalibrationFile holding only the given thresholds: {policy: {branches present: thresholds}};
    the largest count is the every-branch setting."""
    from distree.policies.calibration import Calibration
    from distree.policies.calibration_file import CalibrationFile, CalibrationTarget

    def fit(t):
        return {"thresholds": t, "accuracy": 0.0, "drop_pp": 0.0, "macs_per_sample": 0.0, "saving": 0.0}

    entries = {}
    for name, by_count in policies.items():
        top = max(by_count)
        rest = {k: Calibration(**fit(t), met=True, message="") for k, t in by_count.items() if k != top}
        entries[name] = {**fit(by_count[top]), "met": True, "message": "", "by_present": rest}
    return CalibrationFile(target=CalibrationTarget(max_drop_pp=0.5), split="validation", samples=0, policies=entries)


def until(predicate, timeout_s: float = 15.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` passes (False): for what
    other processes do in their own time (log lines, health)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
