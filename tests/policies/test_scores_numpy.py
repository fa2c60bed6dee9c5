"""The built-in scores on numpy arrays (a coordinator serving an export, without torch)
equal those on torch tensors within float32 rounding, and stay numpy."""

import numpy as np
import pytest
import torch

from distree.exits import ExitRecords
from distree.policies import decide_exits, exit_scores, make_policy, policy_names


@pytest.mark.parametrize("name", policy_names())
def test_every_built_in_score_is_the_same_on_numpy_arrays(name):
    torch.manual_seed(0)
    exits, rows = 3, 50
    logits = torch.randn(exits, rows, 10) * 3
    logits[1, :5] = logits[0, :5]  # exits that agree and embeddings that do not move
    embeddings = torch.randn(exits, rows, 16)
    embeddings[1, :5] = embeddings[0, :5] * 2
    agreement = torch.rand(exits, rows) * 2 - 1
    agreement[:, :3] = -torch.inf  # one branch present
    labels = logits[1].argmax(-1)
    labels[::3] = (labels[::3] + 1) % 10
    on_torch = ExitRecords(logits, embeddings, agreement)
    on_numpy = ExitRecords(*(t.numpy() for t in on_torch))
    policy = make_policy(name, labels=labels if make_policy(name).needs_labels else None)
    want = exit_scores(policy, on_torch)
    if policy.needs_labels:
        policy = make_policy(name, labels=labels.numpy())
    got = exit_scores(policy, on_numpy)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (exits, rows)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=2e-6, equal_nan=False)
    assert decide_exits(got, [0.0, 0.0]).dtype == np.int64
    decided = policy.should_exit(1, on_numpy.until(1), [np.inf, np.inf])
    assert isinstance(decided, np.ndarray) and decided.dtype == bool
