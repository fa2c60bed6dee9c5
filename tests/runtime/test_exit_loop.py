import torch

from distree.models import ExitHead
from distree.policies import ExitThresholds, make_policy
from distree.runtime.exit_loop import ExitLoop


def _heads(num_exits=3, branches=2, dim=4):
    torch.manual_seed(0)
    return torch.nn.ModuleList(ExitHead([dim] * branches, embed_dim=8, num_classes=3).eval() for _ in range(num_exits))


def test_rows_leave_with_their_exit_reason_and_logits():
    heads = _heads()
    # Thresholds no max-prob score reaches: only the deadline and the last exit stop rows.
    loop = ExitLoop(heads, make_policy("max-prob"), ExitThresholds.same([2.0, 2.0], 2), rows=4)
    v = [torch.randn(4, 4), torch.randn(4, 4)]
    go_on = loop.step(0, v, force=torch.tensor([False, True, False, False]))
    assert go_on.tolist() == [True, False, True, True]
    assert loop.alive.tolist() == [0, 2, 3] and loop.exit.tolist() == [-1, 0, -1, -1]
    with torch.no_grad():
        expected = heads[0](v).logits[1]
    torch.testing.assert_close(loop.logits[1], expected)
    # The next stage gets vectors for the 3 running rows only; one branch did not answer.
    loop.step(1, [torch.randn(3, 4), None])
    loop.step(2, [torch.randn(3, 4), torch.randn(3, 4)])
    assert loop.done and loop.exit.tolist() == [2, 0, 2, 2]
    assert loop.reason == ["last-exit", "deadline", "last-exit", "last-exit"]
    assert loop.predictions().shape == (4,)


def test_each_stage_reads_the_thresholds_for_the_branches_that_answered():
    # With both branches no max-prob score reaches 2.0; with one, every score passes -1.
    thresholds = ExitThresholds({2: [2.0, 2.0], 1: [-1.0, -1.0]})
    loop = ExitLoop(_heads(), make_policy("max-prob"), thresholds, rows=3)
    assert loop.step(0, [torch.randn(3, 4), torch.randn(3, 4)]).all()
    assert not loop.step(1, [None, torch.randn(3, 4)]).any()
    assert loop.exit.tolist() == [1, 1, 1] and set(loop.reason) == {"policy"}


def test_a_policy_that_reads_agreement_decides_on_the_running_rows_own_agreement():
    heads = _heads()
    v0, v1 = [torch.randn(6, 4), torch.randn(6, 4)], [torch.randn(6, 4), torch.randn(6, 4)]
    with torch.no_grad():
        agree0, agree1 = heads[0](v0).agreement, heads[1](v1).agreement
    t0 = float(agree0.median())
    on = agree0 < t0  # the rows that go on after exit 0
    t1 = float(agree1[on].median())
    loop = ExitLoop(heads, make_policy("feature-agreement"), ExitThresholds.same([t0, t1], 2), rows=6)
    assert loop.step(0, v0).tolist() == on.tolist()
    # Stage 1 sees only the running rows: the loop must pair each with its own agreement.
    loop.step(1, [v[on] for v in v1])
    if not loop.done:
        loop.step(2, [torch.randn(int((loop.exit < 0).sum()), 4) for _ in range(2)])
    expected = torch.where(~on, 0, torch.where(agree1 >= t1, 1, 2))
    assert loop.exit.tolist() == expected.tolist()
    assert {loop.reason[r] for r in range(6) if expected[r] < 2} == {"policy"}


class _Spy(torch.nn.Module):
    """An exit head that records whether it was asked for the agreement."""

    def __init__(self, head):
        super().__init__()
        self.head, self.asked = head, []

    def forward(self, vectors, mask=None, agreement=True):
        self.asked.append(agreement)
        return self.head(vectors, mask, agreement)


def test_the_heads_compute_agreement_only_for_a_policy_that_reads_it():
    for name, reads in (("max-prob", False), ("feature-agreement", True)):
        spies = torch.nn.ModuleList(_Spy(h) for h in _heads())
        loop = ExitLoop(spies, make_policy(name), ExitThresholds.same([2.0, 2.0], 2), rows=2)
        for k in range(3):
            loop.step(k, [torch.randn(2, 4), torch.randn(2, 4)])
        assert [a for s in spies for a in s.asked] == [reads] * 3, name


def test_full_execution_runs_a_head_only_where_rows_leave():
    spies = torch.nn.ModuleList(_Spy(h) for h in _heads())
    loop = ExitLoop(spies, make_policy("full"), ExitThresholds.same([float("inf")] * 2, 2), rows=3)
    v = [torch.randn(3, 4), torch.randn(3, 4)]
    assert loop.step(0, v).all()
    go_on = loop.step(1, v, force=torch.tensor([False, True, False]))  # a deadline stops row 1
    loop.step(2, [x[go_on] for x in v])
    assert [len(s.asked) for s in spies] == [0, 1, 1]
    assert loop.exit.tolist() == [2, 1, 2] and loop.reason == ["last-exit", "deadline", "last-exit"]
