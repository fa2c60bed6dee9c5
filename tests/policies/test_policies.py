import math

import pytest
import torch

from distree.models import ExitRecords
from distree.policies import decide_exits, exit_scores, make_policy, should_stop_for_deadline


def _onehot(classes, confidence):
    """Logits (N, 3) whose softmax puts ``confidence`` on the given class."""
    rest = (1 - confidence) / 2
    p = torch.full((len(classes), 3), rest)
    p[torch.arange(len(classes)), torch.tensor(classes)] = confidence
    return p.log()


# Three exits, two samples. Sample 0 is easy (confident, stable), sample 1 hard.
LOGITS = torch.stack(
    [
        torch.cat([_onehot([0], 0.95), _onehot([1], 0.4)]),
        torch.cat([_onehot([0], 0.97), _onehot([2], 0.5)]),
        torch.cat([_onehot([0], 0.98), _onehot([2], 0.9)]),
    ]
)
EMB = torch.tensor(
    [
        [[1.0, 0.0], [1.0, 0.0]],
        [[1.0, 0.01], [0.0, 1.0]],  # sample 0 barely moves; sample 1 turns 90 degrees
        [[1.0, 0.02], [0.0, 1.0]],
    ]
)
# The branches' agreement at each exit: sample 0's devices agree more and more, sample 1's
# barely; sample 1 had one device at exit 0 (nothing to compare: -inf).
AGREE = torch.tensor([[0.6, -math.inf], [0.8, 0.1], [0.9, 0.3]])
REC = ExitRecords(LOGITS, EMB, AGREE)


def test_max_prob_and_entropy():
    s = exit_scores(make_policy("max-prob"), REC)
    assert s[0].tolist() == pytest.approx([0.95, 0.4])
    assert decide_exits(s, [0.9, 0.9]).tolist() == [0, 2]
    assert decide_exits(s, [0.99, 0.99]).tolist() == [2, 2]
    e = exit_scores(make_policy("entropy"), REC)
    # Uniform-ish = high entropy = low score.
    assert e[0, 0] > e[0, 1]
    assert decide_exits(e, [-0.3, -0.3]).tolist() == [0, 2]


def test_patience_counts_agreeing_exits():
    s = exit_scores(make_policy("patience"), REC)
    assert s.tolist() == [[1, 1], [2, 1], [3, 2]]
    assert decide_exits(s, [2, 2]).tolist() == [1, 2]


def test_feature_diff_uses_embedding_change():
    s = exit_scores(make_policy("feature-diff"), REC)
    assert s[0].tolist() == [-math.inf, -math.inf]
    assert s[1, 0] == pytest.approx(-(1 - 1 / math.sqrt(1 + 1e-4)), abs=1e-6)
    assert s[1, 1] == pytest.approx(-1.0)
    assert decide_exits(s, [0.0, -0.01]).tolist() == [1, 2]
    # The mixed rule decides exit 0 on softmax confidence, and later exits as feature-diff.
    s2 = exit_scores(make_policy("conf-then-feature-diff"), REC)
    assert decide_exits(s2, [0.9, -0.01]).tolist() == [0, 2]
    assert torch.equal(s2[1:], s[1:])


def test_feature_agreement_reads_the_heads_agreement_only():
    s = exit_scores(make_policy("feature-agreement"), REC)
    assert torch.equal(s, AGREE)
    assert decide_exits(s, [0.5, 0.5]).tolist() == [0, 2]
    # It stops at the first exit, and one device alone never stops early.
    assert decide_exits(s, [-1.0, -1.0]).tolist() == [0, 1]
    # Logits and embeddings play no part.
    shuffled = ExitRecords(LOGITS.flip(1), EMB.flip(1), AGREE)
    assert torch.equal(exit_scores(make_policy("feature-agreement"), shuffled), s)
    with pytest.raises(ValueError, match="agreement"):
        exit_scores(make_policy("feature-agreement"), ExitRecords(LOGITS, EMB))


def test_full_and_oracle():
    s = exit_scores(make_policy("full"), REC)
    assert decide_exits(s, [math.inf, math.inf]).tolist() == [2, 2]
    labels = torch.tensor([0, 2])
    o = exit_scores(make_policy("oracle", labels), REC)
    assert decide_exits(o, [0.0, 0.0]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="labels"):
        exit_scores(make_policy("oracle"), REC)


def test_single_sample_equals_batch():
    for name in ("max-prob", "entropy", "patience", "feature-diff", "feature-agreement", "conf-then-feature-diff"):
        pol = make_policy(name)
        batch = exit_scores(pol, REC)
        for i in range(2):
            for e in range(3):
                row = ExitRecords(*([t[i : i + 1] for t in field[: e + 1]] for field in REC))
                one = pol.score(e, row)
                assert one.item() == pytest.approx(batch[e, i].item())
                stop = pol.should_exit(e, ExitRecords(*(f[: e + 1, i : i + 1] for f in REC)), [0.5, 0.5])
                assert bool(stop) == (e == 2 or batch[e, i].item() >= 0.5)


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("magic")


def test_deadline_rule():
    assert not should_stop_for_deadline(10, 5, 20)
    assert should_stop_for_deadline(16, 5, 20)
    assert not should_stop_for_deadline(15, 5, 20)  # finishing exactly on time is in time
    assert not should_stop_for_deadline(1e9, 5, None)
    with pytest.raises(ValueError):
        should_stop_for_deadline(1, 1, 0)
