"""The resume state: three files that must belong to the same epoch."""

import pytest
import torch
from torch import nn

from distree.training.checkpoint import (
    TrainStateError,
    load_train_state,
    remove_train_state,
    save_train_state,
    state_files,
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
    save_train_state(tmp_path / "phase.safetensors", model, opt, {"epochs_done": 3})
    expected_draw = torch.rand(3)
    assert all(f.is_file() for f in state_files(tmp_path / "phase.safetensors"))

    fresh, fresh_opt = _trained_pair(1)
    assert load_train_state(tmp_path / "phase.safetensors", fresh, fresh_opt) == {"epochs_done": 3}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(opt.state[p]["momentum_buffer"], fresh_opt.state[q]["momentum_buffer"])
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved

    remove_train_state(tmp_path / "phase.safetensors")
    assert not any(tmp_path.iterdir())


def test_files_of_two_epochs_are_refused(tmp_path):
    model, opt = _trained_pair(0)
    state = tmp_path / "phase.safetensors"
    save_train_state(state, model, opt, {"epochs_done": 1})
    old_optim = state_files(state)[1].read_bytes()
    save_train_state(state, model, opt, {"epochs_done": 2})
    state_files(state)[1].write_bytes(old_optim)  # as if killed while saving epoch 2
    with pytest.raises(TrainStateError, match="another epoch"):
        load_train_state(state, *_trained_pair(1))
    state_files(state)[1].unlink()
    with pytest.raises(TrainStateError, match="missing"):
        load_train_state(state, *_trained_pair(1))
