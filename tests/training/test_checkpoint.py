"""The resume state: a progress file that names the epoch's two tensor files."""

import json

import pytest
import torch
from torch import nn

from distree.training import checkpoint
from distree.training.checkpoint import (
    TrainStateError,
    load_train_state,
    progress_file,
    remove_train_state,
    save_train_state,
)


def _trained_pair(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(16, 4)).sum().backward()
    opt.step()
    return model, opt


def test_weights_and_optimizer_go_to_separate_files_and_load_back(tmp_path):
    model, opt = _trained_pair(0)
    torch.manual_seed(123)
    save_train_state(tmp_path, "phase", model, opt, {"epochs_done": 3})
    expected_draw = torch.rand(3)
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "phase-e3.optim.safetensors",
        "phase-e3.safetensors",
        "phase.json",
    ]

    fresh, fresh_opt = _trained_pair(1)
    assert load_train_state(tmp_path, "phase", fresh, fresh_opt) == {"epochs_done": 3}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"])
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved

    remove_train_state(tmp_path, "phase")
    assert not any(tmp_path.iterdir())


def test_a_save_cut_short_leaves_the_previous_epoch_loadable(tmp_path, monkeypatch):
    model, opt = _trained_pair(0)
    save_train_state(tmp_path, "phase", model, opt, {"epochs_done": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(16, 4)).sum().backward()
    opt.step()

    def killed(*a, **k):
        raise KeyboardInterrupt  # after both tensor files of epoch 2, before the progress file

    monkeypatch.setattr(checkpoint, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        save_train_state(tmp_path, "phase", model, opt, {"epochs_done": 2})
    monkeypatch.undo()
    assert (tmp_path / "phase-e2.safetensors").is_file()

    fresh, fresh_opt = _trained_pair(1)
    assert load_train_state(tmp_path, "phase", fresh, fresh_opt) == {"epochs_done": 1}
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    save_train_state(tmp_path, "phase", fresh, fresh_opt, {"epochs_done": 2})  # epoch 2 again, cleanly
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "phase-e2.optim.safetensors",
        "phase-e2.safetensors",
        "phase.json",
    ]


def test_missing_or_mismatched_files_are_refused_with_a_reason(tmp_path):
    model, opt = _trained_pair(0)
    save_train_state(tmp_path, "phase", model, opt, {"epochs_done": 1})
    e1 = (tmp_path / "phase-e1.safetensors").read_bytes()
    save_train_state(tmp_path, "phase", model, opt, {"epochs_done": 2})
    (tmp_path / "phase-e2.safetensors").write_bytes(e1)  # epoch 1's weights under epoch 2's name
    with pytest.raises(TrainStateError, match="another epoch"):
        load_train_state(tmp_path, "phase", *_trained_pair(1))
    (tmp_path / "phase-e2.optim.safetensors").unlink()
    with pytest.raises(TrainStateError, match="missing"):
        load_train_state(tmp_path, "phase", *_trained_pair(1))
    meta = json.loads(progress_file(tmp_path, "phase").read_text())
    del meta["files"]
    progress_file(tmp_path, "phase").write_text(json.dumps(meta))
    with pytest.raises(TrainStateError, match="earlier distree"):
        load_train_state(tmp_path, "phase", *_trained_pair(1))
