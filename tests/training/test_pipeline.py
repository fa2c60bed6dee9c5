import json

import pytest
import torch
from conftest import tiny_run_config
from safetensors.torch import load_file

from distree.data import load_data
from distree.run import RunDir
from distree.training import loop
from distree.training.pipeline import RunExistsError, train_run


@pytest.fixture
def splits(image_folder):
    return load_data(str(image_folder), val_fraction=0.2)


def test_tiny_run_lowers_loss_and_checkpoints_load_bit_exactly(tmp_path, splits):
    cfg = tiny_run_config(epochs=4)
    run = train_run(tmp_path / "run", splits, cfg, torch.device("cpu"), log=lambda m: None)
    rows = [json.loads(line) for line in run.metrics_file.read_text().splitlines()]
    for phase in ("teacher", "student"):
        losses = [r["train"]["loss"] for r in rows if r["phase"] == phase]
        assert len(losses) == 4 and losses[-1] < losses[0], (phase, losses)
    assert not (run.path / "resume").exists()
    student = run.load_student()
    saved = load_file(str(run.student_file))
    assert set(saved) == set(student.state_dict())
    for k, v in student.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # A second process-equivalent load gives identical outputs.
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        a, b = student(x), RunDir(run.path).load_student()(x)
    assert all(torch.equal(p.logits, q.logits) for p, q in zip(a, b))
    with pytest.raises(RunExistsError, match="finished"):
        train_run(run.path, splits, cfg, torch.device("cpu"), log=lambda m: None)


def test_resume_after_interruption_matches_uninterrupted(tmp_path, splits, monkeypatch):
    # No crop: the student phase runs on precomputed teacher targets, rebuilt on resume.
    cfg = tiny_run_config(epochs=2)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"crop_padding": 0})})
    ref = train_run(tmp_path / "ref", splits, cfg, torch.device("cpu"), log=lambda m: None)

    real = loop.save_train_state
    calls = {"n": 0}

    def crash_after_first_student_epoch(path, *a, **k):
        real(path, *a, **k)
        if "student" in path.name:
            calls["n"] += 1
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_train_state", crash_after_first_student_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=lambda m: None)
    monkeypatch.setattr(loop, "save_train_state", real)
    assert (tmp_path / "cut" / "resume" / "student.safetensors").is_file()
    logs = []
    resumed = train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=logs.append)
    assert any("resuming after epoch 1/2" in m for m in logs)
    a, b = load_file(str(ref.student_file)), load_file(str(resumed.student_file))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_another_config(tmp_path, splits):
    train_run(tmp_path / "r", splits, tiny_run_config(epochs=1), torch.device("cpu"), log=lambda m: None)
    with pytest.raises(RunExistsError, match="different configuration"):
        train_run(tmp_path / "r", splits, tiny_run_config(epochs=2), torch.device("cpu"), log=lambda m: None)
