"""The training recipe's ingredients: schedule, optimizer groups, lookahead, flips, padding."""

import pytest
import torch
from torch import nn

from distree.config import OptimConfig
from distree.data.augment import Views, apply_views
from distree.training.loop import LINEAR_END, LINEAR_START, Lookahead, lr_at, make_optimizer, train_step


def test_the_linear_schedule_warms_up_from_a_fifth_and_decays_to_seven_percent():
    total, warmup = 100, 20
    lrs = [lr_at(s, total, warmup, 2.0, "linear") for s in range(total)]
    assert lrs[0] == pytest.approx(2.0 * (LINEAR_START + (1 - LINEAR_START) / warmup))
    assert max(lrs) == pytest.approx(2.0) and lrs.index(max(lrs)) == warmup - 1
    assert lr_at(total, total, warmup, 2.0, "linear") == pytest.approx(2.0 * LINEAR_END)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    # The cosine schedule is unchanged: from zero, to zero.
    assert lr_at(0, total, warmup, 2.0) == pytest.approx(2.0 / warmup)
    assert lr_at(total, total, warmup, 2.0) == pytest.approx(0.0)


def test_normalisation_parameters_get_their_own_rate_and_the_same_decay_per_step():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 5, 5))
    opt = make_optimizer(net, OptimConfig(lr=0.5, weight_decay=1e-3, norm_lr_scale=64))
    other, norm = opt.param_groups
    assert {id(p) for p in norm["params"]} == {id(net[1].weight), id(net[1].bias)}
    assert norm["lr_scale"] == 64 and other["lr_scale"] == 1
    assert norm["weight_decay"] * norm["lr_scale"] == pytest.approx(other["weight_decay"])
    # Frozen parameters are left out.
    net[1].weight.requires_grad_(False)
    opt = make_optimizer(net, OptimConfig(norm_lr_scale=64))
    assert [id(p) for p in opt.param_groups[1]["params"]] == [id(net[1].bias)]


def test_lookahead_pulls_toward_the_average_and_ends_on_it():
    net = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    la = Lookahead(net, every=2)
    with torch.no_grad():
        net.weight.fill_(1.0)
    la.after_step(0, 10)  # not a multiple of 2: nothing happens
    assert net.weight[0, 0].item() == 1.0
    la.after_step(1, 10)  # decay 0.95^2 * 0.2^3: almost all of the new weights
    d = 0.95**2 * 0.2**3
    assert net.weight[0, 0].item() == pytest.approx(1 - d)
    assert la.average["weight"][0, 0].item() == pytest.approx(1 - d)
    with torch.no_grad():
        net.weight.fill_(5.0)
    la.after_step(9, 10)  # the last step: the weights become the average, the last steps' moves dropped
    assert net.weight[0, 0].item() == pytest.approx(1 - d)
    assert torch.equal(net.weight, la.average["weight"])


def test_reflect_padding_fills_the_border_with_the_image():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    shift = Views(torch.tensor([0]), torch.tensor([0]), torch.tensor([False]))  # up-left by the padding
    zeros = apply_views(x, 1, shift)
    reflect = apply_views(x, 1, shift, "reflect")
    assert zeros[0, 0, 0].tolist() == [0, 0, 0, 0]
    assert reflect[0, 0, 0].tolist() == x[0, 0, 1, [1, 0, 1, 2]].tolist()
    assert torch.equal(reflect[0, 0, 1:, 1:], x[0, 0, :3, :3])


def test_the_whitening_sample_is_drawn_across_a_class_ordered_split():
    from distree.training.pipeline import init_sample

    labels = torch.arange(10).repeat_interleave(500)  # an image folder's order: class after class
    sample = init_sample(labels, seed=0, n=1000)
    assert len(sample) == 1000
    assert sample.bincount(minlength=10).min() > 60
    assert torch.equal(sample, init_sample(labels, seed=0, n=1000))


@pytest.mark.parametrize(
    ("precision", "dtype"), [("auto", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_a_training_step_computes_at_the_configured_precision_and_keeps_fp32_weights(precision, dtype):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    seen = []
    net[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))

    class Objective(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, y, rows):
            return nn.functional.cross_entropy(self.net(x), y), {}

    obj = Objective()
    opt = make_optimizer(obj, OptimConfig(precision=precision))
    before = net[0].weight.detach().clone()
    train_step(
        obj, opt, torch.randn(4, 3, 5, 5), torch.tensor([0, 1, 0, 1]), None, torch.device("cpu"), precision=precision
    )
    assert seen == [dtype]  # on a CPU, auto is fp32
    assert net[0].weight.dtype == torch.float32 and not torch.equal(net[0].weight, before)
