import torch
from conftest import tiny_student_config
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distree.config import WideResNetConfig
from distree.models import Branch, DistrEEStudent, WideResNet


def _student(**kw) -> DistrEEStudent:
    return DistrEEStudent(tiny_student_config(**kw), in_channels=3, num_classes=5, image_size=8).eval()


def test_stage_by_stage_equals_whole_forward():
    """Per-request, interleaved stage execution with external state equals a batched pass."""
    torch.manual_seed(0)
    model = _student(branches=3, exit_points=[1, 2, 4, 6], depth=16)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        whole = model(x)
        # One request at a time, branches interleaved, activations held by the caller.
        for i in range(x.shape[0]):
            state = dict.fromkeys(range(model.num_branches), x[i : i + 1])
            for k in range(model.num_exits):
                vectors = []
                for b in reversed(range(model.num_branches)):
                    state[b], v = model.branches[b].run_stage(k, state[b])
                    vectors.insert(0, v)
                out = model.heads[k](vectors)
                torch.testing.assert_close(out.logits, whole[k].logits[i : i + 1], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out.embedding, whole[k].embedding[i : i + 1], rtol=1e-5, atol=1e-5)


def test_stages_cover_every_block_once():
    """The stages chained equal the unsplit network (stem + all blocks), so nothing is lost."""
    cfg = WideResNetConfig(depth=16, width=0.5)
    branch = Branch(cfg, [1, 3, 6], in_channels=3).eval()
    x = torch.randn(2, 3, 8, 8)
    plain = nn.Sequential(branch.stem, *[blk for stage in branch.stages for blk in stage])
    with torch.no_grad():
        last = branch(x)[-1]
        torch.testing.assert_close(last, branch.taps[-1](plain(x)))
    assert [len(s) for s in branch.stages] == [1, 2, 3]


def test_macs_add_up():
    model = _student(branches=2)
    macs = model.macs
    x = torch.zeros(1, 3, 8, 8)
    with FlopCounterMode(display=False) as fc:
        model(x)
    # A whole forward runs every stage of every branch and every head.
    assert fc.get_total_flops() // 2 == sum(map(sum, macs.stage)) + sum(macs.head)
    assert macs.exit_cumulative(model.num_exits - 1) == sum(map(sum, macs.stage)) + sum(macs.head)
    assert macs.full() == sum(map(sum, macs.stage)) + macs.head[-1]
    cum = [macs.exit_cumulative(e) for e in range(model.num_exits)]
    assert cum == sorted(cum) and cum[0] > 0
    assert macs.exit_cumulative(0, present=[1]) == macs.stage[1][0] + macs.head[0]
    # MACs of the first conv of a branch by hand: 3x3 kernel, 3 -> 4 channels, 8x8 output.
    assert macs.stage[0][0] >= 3 * 3 * 3 * 4 * 8 * 8


def test_teacher_output_shapes():
    t = WideResNet(WideResNetConfig(depth=10, width=1), in_channels=1, num_classes=7)
    out = t(torch.randn(2, 1, 28, 28))
    assert out.logits.shape == (2, 7) and out.features.shape == (2, 64)


def test_present_subset_skips_absent_branches():
    model = _student(branches=3)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        sub = model(x, present=[0, 2])
        mask = torch.tensor([[True, False, True]] * 2)
        masked = model(x, mask=mask)
    for a, b in zip(sub, masked):
        torch.testing.assert_close(a.logits, b.logits)
