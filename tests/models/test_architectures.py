"""The architecture families: chosen by ``arch`` in a config, each a teacher and a branch."""

import pytest
import torch

from distree.config import ConfigError, RunConfig, WhitenedConvNetConfig, WideResNetConfig, parse_config
from distree.data.augment import Normalization
from distree.inference.records import teacher_logits
from distree.models import WhitenedConvNet, WideResNet, build_teacher
from distree.models.probes import TeacherExits, teacher_block_costs


def test_the_teacher_arch_field_chooses_the_architecture_and_defaults_to_wideresnet():
    assert isinstance(RunConfig().teacher, WideResNetConfig)
    cfg = parse_config(RunConfig, {"teacher": {"depth": 10, "width": 1}})
    assert isinstance(cfg.teacher, WideResNetConfig) and cfg.teacher.depth == 10
    cfg = parse_config(RunConfig, {"teacher": {"arch": "whitened-convnet", "widths": [8, 16]}})
    assert isinstance(cfg.teacher, WhitenedConvNetConfig) and cfg.teacher.widths == [8, 16]
    with pytest.raises(ConfigError, match="teacher"):
        parse_config(RunConfig, {"teacher": {"arch": "resnet-9000"}})
    with pytest.raises(ConfigError, match="teacher.*depth"):
        parse_config(RunConfig, {"teacher": {"arch": "whitened-convnet", "depth": 16}})
    # A run.json written back is read back as the same architecture.
    again = RunConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg


@pytest.mark.parametrize(
    "config",
    [WideResNetConfig(depth=10, width=0.5), WhitenedConvNetConfig(arch="whitened-convnet", widths=[8, 16])],
    ids=["wideresnet", "whitened-convnet"],
)
def test_every_teacher_has_the_shape_the_baseline_exits_need(config):
    torch.manual_seed(0)
    teacher = build_teacher(config, in_channels=3, num_classes=5).eval()
    assert isinstance(teacher, WideResNet if isinstance(config, WideResNetConfig) else WhitenedConvNet)
    x = torch.randn(4, 3, 8, 8)
    out = teacher(x)
    assert out.logits.shape == (4, 5) and out.features.shape == (4, teacher.feature_dim)
    h = teacher.stem(x)
    for block, channels in zip(teacher.blocks, teacher.block_channels, strict=True):
        h = block(h)
        assert h.shape[1] == channels
    exits = TeacherExits(teacher, [1], num_classes=5)
    logits = exits.all_logits(teacher, x)
    torch.testing.assert_close(logits[-1], out.logits)
    macs, _ = teacher_block_costs(teacher, 3, 8)
    assert len(macs) == len(teacher.blocks) and all(m > 0 for m in macs)


def test_the_first_layer_whitens_the_training_patches():
    torch.manual_seed(0)
    # Strongly correlated channels and neighbouring pixels.
    base = torch.randn(400, 1, 9, 9)
    x = torch.cat([base, 0.8 * base + 0.6 * torch.randn_like(base), torch.randn_like(base)], 1)
    x = x + 0.5 * torch.roll(x, 1, dims=3)
    teacher = WhitenedConvNet(WhitenedConvNetConfig(arch="whitened-convnet", widths=[4]), 3, 2)
    whiten = teacher.stem[0]
    assert not whiten.weight.requires_grad
    teacher.init_from_data(x)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x, whiten.weight)  # without the bias
    n = whiten.out_channels // 2
    flat = out[:, :n].permute(0, 2, 3, 1).reshape(-1, n)
    covariance = flat.T @ flat / len(flat)
    # Identity up to the eigenvalue floor that keeps near-constant directions small.
    torch.testing.assert_close(covariance, torch.eye(n), atol=0.02, rtol=0)
    torch.testing.assert_close(out[:, n:], -out[:, :n])


def test_test_time_augmentation_averages_mirrored_and_shifted_views():
    torch.manual_seed(0)
    teacher = build_teacher(WideResNetConfig(depth=10, width=0.5), 3, 4).eval()
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    norm = Normalization((0.5,) * 3, (0.25,) * 3)
    plain = teacher_logits(teacher, images, norm, 4, torch.device("cpu"))
    tta = teacher_logits(teacher, images, norm, 4, torch.device("cpu"), tta=True)
    x = norm(images)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    with torch.no_grad():

        def both(v):
            return (teacher(v).logits + teacher(v.flip(3)).logits) / 2

        expected = both(x) / 2 + (both(padded[:, :, :8, :8]) + both(padded[:, :, 2:, 2:])) / 4
    torch.testing.assert_close(tta, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, tta)


def test_a_student_of_whitened_convnet_branches_runs_stage_by_stage_as_a_whole():
    from distree.config import StudentConfig
    from distree.models import DistrEEStudent

    branch = {"arch": "whitened-convnet", "widths": [8, 16]}
    cfg = parse_config(StudentConfig, {"branches": [branch] * 3, "embed_dim": 16})
    assert cfg.exit_points == [1, 2]  # one exit after each group by default
    torch.manual_seed(0)
    student = DistrEEStudent(cfg, in_channels=3, num_classes=5, image_size=8)
    x = torch.randn(6, 3, 8, 8)
    before = student.branches[1].stem[0].weight.clone()
    student.init_from_data(x)
    assert not torch.equal(before, student.branches[1].stem[0].weight)
    assert not any(p.requires_grad for b in student.branches for p in b.stem[0].weight.unsqueeze(0))
    student.eval()
    with torch.no_grad():
        whole = student(x)
        vectors = []
        for net in student.branches:
            h, v0 = net.run_stage(0, x)
            _, v1 = net.run_stage(1, h)
            vectors.append((v0, v1))
        for k in range(2):
            out = student.heads[k]([v[k] for v in vectors])
            torch.testing.assert_close(out.logits, whole[k].logits)
    assert student.branches[0].out_dims == [8, 16]
    macs = student.macs
    assert all(m > 0 for per in macs.stage for m in per)
    # Branches of different block counts cannot share exit points.
    with pytest.raises(ConfigError, match="same number of blocks"):
        parse_config(StudentConfig, {"branches": [branch, {"arch": "whitened-convnet", "widths": [8]}]})
