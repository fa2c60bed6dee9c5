import json

import pytest
import torch
from conftest import tiny_run_config
from safetensors.torch import load_file

from distree.data import load_data
from distree.run import RunDir
from distree.training import loop
from distree.training.loop import TimeLimitReached
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

    def crash_after_first_student_epoch(resume_dir, phase, *a, **k):
        real(resume_dir, phase, *a, **k)
        if phase == "student":
            calls["n"] += 1
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_train_state", crash_after_first_student_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=lambda m: None)
    monkeypatch.setattr(loop, "save_train_state", real)
    assert (tmp_path / "cut" / "resume" / "student.json").is_file()
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


def test_time_limit_stops_at_an_epoch_boundary_and_the_run_continues(tmp_path, splits, monkeypatch):
    # With crops and teacher_views: the student trains on two precomputed views per image.
    cfg = tiny_run_config(epochs=3)
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teacher_views": 2})})
    ref = train_run(tmp_path / "ref", splits, cfg, torch.device("cpu"), log=lambda m: None)

    # No epoch timed yet: an epoch running at the deadline is abandoned, nothing is saved.
    with pytest.raises(TimeLimitReached, match="during epoch 1/3"):
        train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=lambda m: None, time_limit=0)
    assert not (tmp_path / "cut" / "resume").exists()

    real = loop.save_train_state
    saved = []

    def crash_after_second_teacher_epoch(resume_dir, phase, *a, **k):
        real(resume_dir, phase, *a, **k)
        saved.append(phase)
        if len(saved) == 2:  # saved, but killed before the epoch was logged
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_train_state", crash_after_second_teacher_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=lambda m: None)
    monkeypatch.setattr(loop, "save_train_state", real)

    # One epoch is timed (in metrics.jsonl, by the earlier process), and the third cannot
    # fit in a microsecond: the run stops before it, with its state kept.
    with pytest.raises(TimeLimitReached, match="after epoch 2/3"):
        train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=lambda m: None, time_limit=1e-6)
    assert (tmp_path / "cut" / "resume" / "teacher.json").is_file()
    logs = []
    resumed = train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=logs.append, time_limit=3600)
    assert any("teacher: resuming after epoch 2/3" in m for m in logs)
    assert not (tmp_path / "cut" / "resume").exists(), "a finished run keeps no resume state or teacher outputs"
    a, b = load_file(str(ref.student_file)), load_file(str(resumed.student_file))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(line) for line in resumed.metrics_file.read_text().splitlines()]
    assert [(r["phase"], r["epoch"]) for r in rows] == [("teacher", e) for e in (1, 3)] + [
        ("student", e) for e in (1, 2, 3)
    ]


def test_the_next_epoch_is_timed_by_the_slowest_recent_one():
    assert loop.next_epoch_seconds([200.0]) == 200.0
    # A slow epoch long ago no longer counts; a recent one does.
    assert loop.next_epoch_seconds([862.0, 210.0, 205.0, 215.0]) == 215.0
    assert loop.next_epoch_seconds([210.0, 862.0, 205.0, 215.0]) == 862.0


def test_the_fast_recipe_learns_and_resumes_bit_exactly(tmp_path, splits, monkeypatch):
    # Every ingredient at once: a whitened convnet teacher, lookahead (its average is part
    # of the resume state), alternating flips (their half is drawn once per run), reflected
    # crops, label smoothing, the linear schedule, a separate rate for the BN shifts.
    cfg = tiny_run_config(epochs=3)
    raw = cfg.model_dump(mode="json")
    raw["data"].update(pad_mode="reflect", alternate_flip=True)
    raw["teacher"] = {"arch": "whitened-convnet", "widths": [8, 16]}
    raw["student"] = {"branches": [{"arch": "whitened-convnet", "widths": [4, 8]}] * 2, "embed_dim": 16}
    raw["teacher_optim"].update(
        lookahead_every=2, label_smoothing=0.2, schedule="linear", norm_lr_scale=8, warmup_epochs=1
    )
    raw["student_optim"]["epochs"] = 1
    cfg = type(cfg).model_validate(raw)
    ref = train_run(tmp_path / "ref", splits, cfg, torch.device("cpu"), log=lambda m: None)
    rows = [json.loads(line) for line in ref.metrics_file.read_text().splitlines()]
    losses = [r["train"]["loss"] for r in rows if r["phase"] == "teacher"]
    assert losses[-1] < losses[0], losses

    real = loop.save_train_state

    def crash_after_first_teacher_epoch(resume_dir, phase, *a, **k):
        real(resume_dir, phase, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_train_state", crash_after_first_teacher_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=lambda m: None)
    monkeypatch.setattr(loop, "save_train_state", real)
    resumed = train_run(tmp_path / "cut", splits, cfg, torch.device("cpu"), log=lambda m: None)
    for name in ("teacher.safetensors", "student.safetensors"):
        a, b = load_file(str(ref.path / name)), load_file(str(resumed.path / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_a_run_stopped_after_its_teacher_continues_with_the_student(tmp_path, splits):
    cfg = tiny_run_config(epochs=1)
    run = train_run(tmp_path / "r", splits, cfg, torch.device("cpu"), log=lambda m: None, teacher_only=True)
    assert run.teacher_file.is_file() and not run.student_file.is_file()
    logs = []
    train_run(tmp_path / "r", splits, cfg, torch.device("cpu"), log=logs.append)
    assert run.student_file.is_file()
    phases = [json.loads(line)["phase"] for line in run.metrics_file.read_text().splitlines()]
    assert phases == ["teacher", "student"]  # the teacher was not trained again
