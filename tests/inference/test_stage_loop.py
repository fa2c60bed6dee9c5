"""The stage loop on synthetic vectors: decisions, reasons, branches and costs, row by row."""

import math

import pytest
import torch

from distree.exits import ExitRecords
from distree.inference.costs import ExitCosts
from distree.inference.stage_loop import StageLoop, StopReason
from distree.models import ExitHead, HeadFusion, StudentMacs
from distree.policies import ExitPolicy, ExitThresholds, make_policy
from distree.policies.schedule import Schedule

NEVER, ALWAYS = 2.0, -1.0  # max-prob thresholds no score reaches / every score passes
# Branch b's stage k costs 10^(b+1) * (k+1) MACs; head k costs k+1: every sum tells its parts apart.
MACS = StudentMacs(stage=[[10 * (k + 1) for k in range(3)], [100 * (k + 1) for k in range(3)]], head=[1, 2, 3])


def _heads(num_exits=3, branches=2, dim=4):
    torch.manual_seed(0)
    return torch.nn.ModuleList(ExitHead([dim] * branches, embed_dim=8, num_classes=3).eval() for _ in range(num_exits))


def _loop(policy="max-prob", thresholds=(NEVER, NEVER), rows=4, heads=None, **kw):
    p = make_policy(policy) if isinstance(policy, str) else policy
    t = thresholds if isinstance(thresholds, ExitThresholds) else ExitThresholds.same(list(thresholds), 2)
    return StageLoop(HeadFusion(heads or _heads()), p, t, ExitCosts(MACS, p), rows, num_exits=3, **kw)


def _v(rows, *present):
    return [torch.randn(rows, 4) if b in present else None for b in range(2)]


def _cost(policy_reads_exits: bool, exit_at: int, per_stage_present: list[list[int]]) -> int:
    stages = sum(MACS.stage[b][k] for k, bs in enumerate(per_stage_present[: exit_at + 1]) for b in bs)
    heads = sum(MACS.head[: exit_at + 1]) if policy_reads_exits else MACS.head[exit_at]
    return stages + heads


@pytest.mark.parametrize(
    "case",
    [
        # name, policy, thresholds, branches answering each stage, deadlines -> exit, reason
        ("runs to the last exit", "max-prob", (NEVER, NEVER), [[0, 1]] * 3, None, 2, StopReason.LAST_EXIT),
        ("the policy stops at exit 0", "max-prob", (ALWAYS, NEVER), [[0, 1]] * 3, None, 0, StopReason.POLICY),
        ("the policy stops at exit 1", "max-prob", (NEVER, ALWAYS), [[0, 1]] * 3, None, 1, StopReason.POLICY),
        ("a branch lost mid-request", "max-prob", (NEVER, NEVER), [[0, 1], [0], [0]], None, 2, StopReason.LAST_EXIT),
        ("full execution", "full", (math.inf, math.inf), [[0, 1]] * 3, None, 2, StopReason.LAST_EXIT),
        ("a deadline stops at exit 0", "max-prob", (NEVER, NEVER), [[0, 1]] * 3, 15.0, 0, StopReason.DEADLINE),
        ("a deadline stops full execution", "full", (math.inf,) * 2, [[0, 1]] * 3, 25.0, 1, StopReason.DEADLINE),
        ("a deadline with time to spare", "max-prob", (NEVER, NEVER), [[0, 1]] * 3, 1e6, 2, StopReason.LAST_EXIT),
    ],
    ids=lambda c: c[0],
)
def test_one_row_through_the_loop(case):
    _, policy, thresholds, present, deadline, want_exit, want_reason = case
    # Each stage takes 10 ms; the deadline rule expects the next to take as long.
    timing = {} if deadline is None else {"arrived_s": torch.zeros(1), "deadline_ms": torch.tensor([deadline])}
    loop = _loop(policy, thresholds, rows=1, **timing)
    for k in range(3):
        loop.step(k, _v(1, *present[k]), stage_ms=10.0, now_s=(k + 1) * 0.010)
        if loop.done:
            break
    out = loop.result()
    assert (int(out.exit[0]), out.reason[0]) == (want_exit, want_reason)
    assert out.branches[0] == present[want_exit]
    reads = make_policy(policy).reads_exits
    assert int(out.macs[0]) == _cost(reads, want_exit, present)
    assert int(out.head_macs[0]) == (sum(MACS.head[: want_exit + 1]) if reads else MACS.head[want_exit])


def test_rows_leave_with_their_exit_reason_and_logits():
    heads = _heads()
    loop = _loop(rows=4, heads=heads, arrived_s=torch.zeros(4), deadline_ms=torch.tensor([1e9, 15.0, 1e9, math.inf]))
    v = _v(4, 0, 1)
    go_on = loop.step(0, v, stage_ms=10.0, now_s=0.010)  # row 1's deadline: 10 + 10 > 15
    assert go_on.tolist() == [True, False, True, True]
    assert loop.alive.tolist() == [0, 2, 3] and loop.exit.tolist() == [-1, 0, -1, -1]
    with torch.no_grad():
        expected = heads[0](v).logits[1]
    torch.testing.assert_close(loop.logits[1], expected)
    # The next stage gets vectors for the 3 running rows only; one branch did not answer,
    # and the loop asks nothing more of it.
    loop.step(1, _v(3, 0), stage_ms=10.0, now_s=0.020)
    assert loop.lost == {1} and list(loop.due()) == [0]
    with pytest.raises(ValueError, match=r"branches \[1\] had nothing to run"):
        loop.step(2, _v(3, 0, 1), stage_ms=10.0, now_s=0.030)
    loop.step(2, _v(3, 0), stage_ms=10.0, now_s=0.030)
    out = loop.result()
    assert out.exit.tolist() == [2, 0, 2, 2]
    assert out.reason == [StopReason.LAST_EXIT, StopReason.DEADLINE, StopReason.LAST_EXIT, StopReason.LAST_EXIT]
    assert out.predictions.shape == (4,)
    assert int(out.macs[1]) == _cost(True, 0, [[0, 1]])
    assert [int(out.macs[r]) for r in (0, 2, 3)] == [_cost(True, 2, [[0, 1], [0], [0]])] * 3


def test_every_row_out_before_the_last_stage_ends_the_loop():
    loop = _loop(thresholds=(ALWAYS, NEVER), rows=5)
    assert not loop.step(0, _v(5, 0, 1)).any()
    assert loop.done and loop.result().exit.tolist() == [0] * 5
    with pytest.raises(RuntimeError, match="not exited"):
        _loop(rows=2).result()


def test_each_stage_reads_the_thresholds_for_the_branches_that_answered():
    # With both branches no max-prob score reaches 2.0; with one, every score passes -1.
    loop = _loop(thresholds=ExitThresholds({2: [NEVER, NEVER], 1: [ALWAYS, ALWAYS]}), rows=3)
    assert loop.step(0, _v(3, 0, 1)).all()
    assert not loop.step(1, _v(3, 1)).any()
    out = loop.result()
    assert out.exit.tolist() == [1, 1, 1] and set(out.reason) == {StopReason.POLICY}
    assert out.branches == [[1]] * 3


def test_no_branch_answering_is_an_error_and_deadlines_need_the_clock():
    with pytest.raises(ValueError, match="no branch answered stage 0"):
        _loop(rows=1).step(0, [None, None])
    loop = _loop(rows=1, arrived_s=torch.zeros(1), deadline_ms=torch.tensor([5.0]))
    with pytest.raises(ValueError, match="the stage's time and the clock"):
        loop.step(0, _v(1, 0, 1))


def test_a_policy_that_reads_agreement_decides_on_the_running_rows_own_agreement():
    heads = _heads()
    v0, v1 = _v(6, 0, 1), _v(6, 0, 1)
    with torch.no_grad():
        agree0, agree1 = heads[0](v0).agreement, heads[1](v1).agreement
    t0 = float(agree0.median())
    on = agree0 < t0  # the rows that go on after exit 0
    t1 = float(agree1[on].median())
    loop = _loop("feature-agreement", (t0, t1), rows=6, heads=heads)
    assert loop.step(0, v0).tolist() == on.tolist()
    # Stage 1 sees only the running rows: the loop must pair each with its own agreement.
    loop.step(1, [v[on] for v in v1])
    if not loop.done:
        loop.step(2, _v(int((loop.exit < 0).sum()), 0, 1))
    expected = torch.where(~on, 0, torch.where(agree1 >= t1, 1, 2))
    assert loop.exit.tolist() == expected.tolist()
    assert {loop.reason[r] for r in range(6) if expected[r] < 2} == {StopReason.POLICY}


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
        loop = _loop(name, rows=2, heads=spies)
        for k in range(3):
            loop.step(k, _v(2, 0, 1))
        assert [a for s in spies for a in s.asked] == [reads] * 3, name


def test_full_execution_runs_a_head_only_where_rows_leave():
    spies = torch.nn.ModuleList(_Spy(h) for h in _heads())
    deadline = torch.tensor([1e9, 25.0, 1e9])
    loop = _loop("full", (math.inf, math.inf), rows=3, heads=spies, arrived_s=torch.zeros(3), deadline_ms=deadline)
    assert loop.step(0, _v(3, 0, 1), stage_ms=10.0, now_s=0.010).all()
    go_on = loop.step(1, _v(3, 0, 1), stage_ms=10.0, now_s=0.020)  # row 1: 20 + 10 > 25
    loop.step(2, _v(int(go_on.sum()), 0, 1), stage_ms=10.0, now_s=0.030)
    assert [len(s.asked) for s in spies] == [0, 1, 1]
    out = loop.result()
    assert out.exit.tolist() == [2, 1, 2]
    assert out.reason == [StopReason.LAST_EXIT, StopReason.DEADLINE, StopReason.LAST_EXIT]
    assert out.head_macs.tolist() == [MACS.head[2], MACS.head[1], MACS.head[2]]


class _SecondExitOnly(ExitPolicy):
    """A policy of a user's own: stop at exit 1 whatever the outputs (not registered)."""

    name = "second-exit-only"

    def score(self, e, seen):
        return torch.full((seen.logits[e].shape[0],), 1.0 if e == 1 else -1.0)


def test_a_policy_of_the_users_own_drives_the_loop():
    loop = _loop(_SecondExitOnly(), (0.0, 0.0), rows=3)
    for k in range(3):
        loop.step(k, _v(int((loop.exit < 0).sum()), 0, 1))
        if loop.done:
            break
    out = loop.result()
    assert out.exit.tolist() == [1, 1, 1] and set(out.reason) == {StopReason.POLICY}
    assert out.macs.tolist() == [_cost(True, 1, [[0, 1]] * 2)] * 3


def test_rows_that_left_are_known_after_each_step_and_match_the_final_result():
    """``left`` names the rows each step stopped, and ``exited`` gives their records while
    other rows still run (what the coordinator answers calls with), the same as ``result``."""

    class EverySecondRow(ExitPolicy):  # stops rows 0 and 2 of each step's running rows
        name = "every-second-row"

        def score(self, e, seen):
            n = seen.logits[e].shape[0]
            return torch.tensor([1.0 if i % 2 == 0 else 0.0 for i in range(n)])

    torch.manual_seed(1)
    loop = _loop(EverySecondRow(), (0.5, 0.5), rows=4)
    seen = {}
    for k in range(3):
        loop.step(k, _v(loop.alive.numel(), 0, 1))
        left = loop.left.tolist()
        seen[k] = (left, loop.exited(loop.left))
        if k < 2:
            with pytest.raises(RuntimeError):
                loop.exited(loop.alive)  # rows still running have no exit yet
        if loop.done:
            break
    assert [seen[k][0] for k in sorted(seen)] == [[0, 2], [1], [3]]
    final = loop.result()
    for left, part in seen.values():
        assert part.exit.tolist() == final.exit[left].tolist()
        assert torch.equal(part.logits, final.logits[left]) and part.macs.tolist() == final.macs[left].tolist()
        assert part.reason == [final.reason[r] for r in left]


def _splitting_threshold(scores):
    """A threshold some of ``scores`` reach and some do not, halfway between two of them (no
    score sits on it, where float32 rounding in numpy or torch could decide); inf if all
    are equal."""
    values = scores[torch.isfinite(scores)].double().unique()
    if values.numel() < 2:
        return math.inf
    i = values.numel() // 2
    return float((values[i - 1] + values[i]) / 2)


class _NumpyHeads:
    """The same heads, called on numpy arrays and giving numpy arrays: a fusion like an
    export's (``OrtHeads``), for the loop's numpy path."""

    def __init__(self, heads):
        import array_api_compat.numpy

        self.xp = array_api_compat.numpy
        self.torch = HeadFusion(heads)

    def __call__(self, k, vectors, agreement):
        out = self.torch(k, [None if v is None else torch.from_numpy(v) for v in vectors], agreement)
        return type(out)(*(None if t is None else t.numpy() for t in out))


@pytest.mark.parametrize("policy", ["max-prob", "entropy", "patience", "feature-diff", "feature-agreement", "full"])
def test_the_loop_on_numpy_arrays_decides_as_on_torch_tensors(policy):
    """Rows that leave at each exit, by the policy and by the deadline, and a branch lost on
    the way: the same exits, reasons, branches, MACs and logits on either kind of array."""
    p = make_policy(policy)
    heads = _heads()
    torch.manual_seed(3)
    rows = 64
    vectors = [[torch.randn(rows, 4) for _ in range(2)] for _ in range(3)]
    present = [[0, 1], [0, 1], [1]]
    deadline = torch.full((rows,), math.inf, dtype=torch.float64)
    deadline[::7] = 15.0  # stopped by the deadline after the first stage
    # Thresholds that some rows reach at each exit and others do not.
    outputs, middle = [], []
    for k in range(2):
        outputs.append(HeadFusion(heads)(k, [v if b in present[k] else None for b, v in enumerate(vectors[k])], True))
        s = p.score(k, ExitRecords.of(outputs, stack=False))
        middle.append(_splitting_threshold(s))
    thresholds = ExitThresholds.same(middle if p.calibrated else [p.fixed_threshold] * 2, 2)

    results = []
    for fusion, to_array in ((HeadFusion(heads), lambda t: t), (_NumpyHeads(heads), lambda t: t.numpy())):
        loop = StageLoop(
            fusion,
            p,
            thresholds,
            ExitCosts(MACS, p),
            rows,
            num_exits=3,
            arrived_s=to_array(torch.zeros(rows, dtype=torch.float64)),
            deadline_ms=to_array(deadline),
        )
        for k in range(3):
            running = torch.as_tensor(loop.alive)
            vs = [to_array(v[running]) if b in present[k] else None for b, v in enumerate(vectors[k])]
            loop.step(k, vs, stage_ms=10.0, now_s=(k + 1) * 0.010)
            if loop.done:
                break
        results.append(loop.result())
    on_torch, on_numpy = results
    assert isinstance(on_numpy.exit, type(on_numpy.logits)) and not torch.is_tensor(on_numpy.exit)
    assert on_numpy.exit.tolist() == on_torch.exit.tolist()
    assert len(set(on_torch.exit.tolist())) >= 2, "rows should leave at more than one exit"
    assert on_numpy.reason == on_torch.reason and on_numpy.branches == on_torch.branches
    assert on_numpy.macs.tolist() == on_torch.macs.tolist()
    assert on_numpy.head_macs.tolist() == on_torch.head_macs.tolist()
    torch.testing.assert_close(torch.from_numpy(on_numpy.logits), on_torch.logits, rtol=0, atol=1e-6)


def test_a_schedule_names_what_each_branch_runs_and_charges_it():
    # Start on branch 1 alone to exit 1, then wake branch 0, which catches up from stage 0.
    plan = Schedule.parse("0:1 1:1 1:2 2:2")
    t = ExitThresholds(ExitThresholds.same([NEVER, NEVER], 2).by_present, schedule=plan, per_step=[NEVER] * 3)
    loop = _loop(thresholds=t, rows=2, start=1)
    assert loop.due() == {1: range(1)}
    loop.step(0, _v(2, 1))
    assert loop.due() == {1: range(1, 2)}
    loop.step(1, _v(2, 1))
    assert loop.due() == {0: range(2)}  # branch 1 is fused from what it gave at exit 1
    with pytest.raises(ValueError, match="decides at exit 1"):
        loop.step(2, _v(2, 0))
    loop.step(1, _v(2, 0))
    assert loop.due() == {0: range(2, 3), 1: range(2, 3)}
    loop.step(2, _v(2, 0, 1))
    out = loop.result()
    assert out.exit.tolist() == [2, 2] and out.branches == [[0, 1]] * 2
    stages = sum(MACS.stage[1]) + sum(MACS.stage[0])  # each branch ran every stage once
    assert out.macs.tolist() == [stages + MACS.head[0] + 2 * MACS.head[1] + MACS.head[2]] * 2


def test_a_schedule_step_missing_a_device_does_not_stop_early():
    # Every score passes the step thresholds, but the woken branch does not answer: the
    # thresholds were fitted with it, so the rows go on to the last step.
    plan = Schedule.parse("0:1 0:2 1:2 2:2")
    t = ExitThresholds(
        ExitThresholds.same([NEVER, NEVER], 2).by_present, schedule=plan, per_step=[NEVER, ALWAYS, ALWAYS]
    )
    loop = _loop(thresholds=t, rows=3)
    assert loop.step(0, _v(3, 0)).all()
    assert loop.step(0, [None, None]).all() and loop.lost == {1}
    assert loop.step(1, _v(3, 0)).all()
    loop.step(2, _v(3, 0))
    out = loop.result()
    assert out.exit.tolist() == [2] * 3 and out.branches == [[0]] * 3
    assert set(out.reason) == {StopReason.LAST_EXIT}


def test_a_schedule_whose_awake_devices_are_all_lost_wakes_the_others():
    # Branch 0 alone starts and does not answer: rather than failing the rows, the loop
    # wakes branch 1 at the same exit, and goes on without stopping early (the thresholds
    # were fitted with both) to the last exit.
    plan = Schedule.parse("0:1 1:1 1:2 2:2")
    t = ExitThresholds(ExitThresholds.same([NEVER, NEVER], 2).by_present, schedule=plan, per_step=[ALWAYS] * 3)
    loop = _loop(thresholds=t, rows=2)
    assert loop.step(0, [None, None]).all() and loop.lost == {0}
    assert loop.due() == {1: range(1)} and loop.next_step.exit == 0
    assert loop.step(0, _v(2, 1)).all()
    assert loop.step(1, _v(2, 1)).all()
    loop.step(2, _v(2, 1))
    out = loop.result()
    assert out.exit.tolist() == [2, 2] and out.branches == [[1]] * 2
    assert out.macs.tolist() == [sum(MACS.stage[1]) + sum(MACS.head)] * 2
    loop = _loop(thresholds=t, rows=1)
    loop.step(0, [None, None])  # branch 0 lost: branch 1 woken
    with pytest.raises(ValueError, match="no branch answered stage 0"):  # nobody left to wake
        loop.step(0, [None, None])


def test_the_deadline_rule_expects_as_many_stages_as_the_next_step_runs():
    # One device to exit 0 in 10 ms; the next step wakes the other at exit 2, which runs
    # three stages: 30 ms more would end past a 35 ms deadline, so the row stops now.
    plan = Schedule.parse("0:1 2:2")
    t = ExitThresholds(ExitThresholds.same([NEVER, NEVER], 2).by_present, schedule=plan, per_step=[NEVER])
    loop = _loop(thresholds=t, rows=2, arrived_s=torch.zeros(2), deadline_ms=torch.tensor([35.0, 45.0]))
    go_on = loop.step(0, _v(2, 0), stage_ms=10.0, now_s=0.010)
    assert go_on.tolist() == [False, True] and loop.reason[0] == StopReason.DEADLINE
