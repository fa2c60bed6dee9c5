"""The ONNX export against the torch model it came from: every branch stage and every exit
head, at batch 1 and 8, for the shipped Fashion-MNIST model (one channel) and a freshly trained one (three)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distree.export.manifest import read_manifest
from distree.export.onnx_export import export_onnx
from distree.export.ort import OrtBranch, OrtHeads
from distree.run import RunDir

pytestmark = pytest.mark.slow  # each export takes seconds, the first one more (the exporter's imports)

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4  # max abs difference, fp32


def _whitened_run(root: Path) -> RunDir:
    """A run whose student branches are whitened convnets, trained for one epoch."""
    from conftest import tiny_run_config, write_image_folder

    from distree.data import load_data
    from distree.training.pipeline import train_run

    raw = tiny_run_config(epochs=1).model_dump(mode="json")
    raw["student"] = {"branches": [{"arch": "whitened-convnet", "widths": [4, 8]}] * 2, "embed_dim": 16}
    splits = load_data(str(write_image_folder(root / "images")), val_fraction=0.2)
    config = type(tiny_run_config()).model_validate(raw)
    return train_run(root / "run", splits, config, torch.device("cpu"), log=lambda m: None)


@pytest.fixture(scope="module", params=["trained", "models/fashion-mnist", "whitened-branches"])
def exported(request, tmp_path_factory):
    if request.param == "trained":
        return request.getfixturevalue("trained")[0], request.getfixturevalue("trained_export")
    if request.param == "whitened-branches":
        run = _whitened_run(tmp_path_factory.mktemp("whitened"))
        out = tmp_path_factory.mktemp("export")
        export_onnx(run, out)
        return run, out
    run = RunDir(ROOT / request.param)
    out = tmp_path_factory.mktemp("export")
    export_onnx(run, out)
    return run, out


def _worst(a: np.ndarray, b: torch.Tensor) -> float:
    assert a.shape == tuple(b.shape)
    return float(np.abs(a - b.numpy()).max())


@pytest.mark.parametrize("batch", [1, 8])
def test_every_stage_and_head_matches_torch(exported, batch):
    run, out = exported
    student = run.load_student().eval()
    manifest = read_manifest(out)
    assert manifest.branch_fingerprints == [run.branch_fingerprint(b) for b in range(student.num_branches)]
    images = torch.randint(
        0, 256, (batch, *manifest.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(batch)
    )
    with torch.no_grad():
        h = {b: run.meta.data.normalization(images) for b in range(student.num_branches)}
        expected = []  # [exit][branch] (state, pooled)
        for k in range(student.num_exits):
            row = []
            for b, branch in enumerate(student.branches):
                h[b], v = branch.run_stage(k, h[b])
                row.append((h[b], v))
            expected.append(row)
    pooled = []  # [exit][branch]
    for b in range(student.num_branches):
        ort_branch = OrtBranch(out, b)
        x = images.numpy()
        for k in range(student.num_exits):
            x, v = ort_branch.run_stage(k, x)
            assert _worst(x, expected[k][b][0]) <= TOLERANCE, (b, k)
            assert _worst(v, expected[k][b][1]) <= TOLERANCE, (b, k)
            if b == 0:
                pooled.append([])
            pooled[k].append(v)
    heads = OrtHeads(out)
    some = [b % 2 == 0 for b in range(student.num_branches)]  # every other branch answered
    for e, head in enumerate(student.heads):
        for present in ([True] * student.num_branches, some):
            z, logits, agreement = heads.run(e, [v if p else None for v, p in zip(pooled[e], present)])
            with torch.no_grad():
                want = head([exp[1] if p else None for exp, p in zip(expected[e], present)])
            assert _worst(z, want.embedding) <= TOLERANCE
            assert _worst(logits, want.logits) <= TOLERANCE
            finite = np.isfinite(agreement)
            assert (finite == torch.isfinite(want.agreement).numpy()).all()
            if finite.any():  # a one-branch subset has no agreement to compare
                assert _worst(agreement[finite], want.agreement[torch.from_numpy(finite)]) <= TOLERANCE


def test_execution_providers_are_checked_against_this_onnxruntime():
    import onnxruntime

    from distree.export.ort import CPU_PROVIDERS, check_providers

    assert check_providers(None) == list(CPU_PROVIDERS)
    assert check_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="has no NoSuchExecutionProvider; it has .*CPUExecutionProvider") as err:
        check_providers(["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert all(p in str(err.value) for p in onnxruntime.get_available_providers())


def test_a_worker_given_providers_it_cannot_use_exits_2_naming_them(trained_export, capsys):
    from distree.cli.main import main

    args = ["worker", str(trained_export), "--backend", "onnxruntime", "--branch", "0", "--listen", "127.0.0.1:1"]
    assert main([*args, "--providers", "NoSuchExecutionProvider"]) == 2
    assert "has no NoSuchExecutionProvider" in capsys.readouterr().err
    assert main(["worker", "RUN", "--branch", "0", "--providers", "CPUExecutionProvider"]) == 2
    assert "--providers are onnxruntime's" in capsys.readouterr().err


def test_distree_load_of_an_export_answers_as_the_run_does(trained, trained_export):
    """``distree.load`` on an export runs it with onnxruntime, through the same stage loop
    and calibration: the same exits, predictions, branches and MACs as the run in torch."""
    import distree

    run, splits = trained
    images = list(splits.test.images[:40].numpy())
    on_ort, on_torch = distree.load(trained_export), distree.load(run.path)
    assert (on_ort.num_branches, on_ort.num_exits, on_ort.classes) == (
        on_torch.num_branches,
        on_torch.num_exits,
        on_torch.classes,
    )
    a, b = on_ort.infer(images), on_torch.infer(images)
    assert [(x.prediction, x.exit, x.branches, x.macs) for x in a] == [
        (y.prediction, y.exit, y.branches, y.macs) for y in b
    ]
    assert len({x.exit for x in a}) > 1
    np.testing.assert_allclose([x.probabilities for x in a], [y.probabilities for y in b], atol=1e-4)
    with pytest.raises(ValueError, match="providers and threads are for an export"):
        distree.load(run.path, providers=["CPUExecutionProvider"])
