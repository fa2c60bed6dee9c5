import torch
from conftest import tiny_student_config

from distree.config import DistillConfig, WideResNetConfig
from distree.models import DistrEEStudent, TeacherOutput, WideResNet
from distree.training.losses import branch_dropout_mask, distillation_loss, feature_transfer_loss
from distree.training.objectives import StudentObjective


def test_distillation_zero_iff_equal():
    t = torch.randn(8, 5)
    assert distillation_loss(t.clone(), t, 4.0).abs() < 1e-6
    assert distillation_loss(torch.randn(8, 5), t, 4.0) > 1e-3


def test_feature_transfer_zero_iff_aligned():
    f = torch.randn(8, 12)
    assert feature_transfer_loss(f * 3.0, f).abs() < 1e-6
    assert feature_transfer_loss(torch.randn(8, 12), f) > 1e-2


def test_dropout_mask_keeps_one_branch():
    torch.manual_seed(0)
    m = branch_dropout_mask(2000, 3, 0.9, torch.device("cpu"))
    assert m.any(1).all()
    assert 0.05 < m.float().mean() < 0.5
    assert branch_dropout_mask(10, 3, 0.0, torch.device("cpu")).all()


def _objective(**distill):
    torch.manual_seed(0)
    student = DistrEEStudent(tiny_student_config(branches=3), 3, 4, 8)
    teacher = WideResNet(WideResNetConfig(depth=10, width=0.5), 3, 4)
    return StudentObjective(student, teacher, DistillConfig(**distill))


def test_gradients_reach_every_branch_and_head():
    obj = _objective(branch_dropout=0.0)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    loss, terms = obj(x, y)
    assert set(terms) == {"ce", "kd", "ft"} and all(v > 0 for v in terms.values())
    loss.backward()
    for name, p in obj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not any(p.requires_grad for p in obj._teacher[0].parameters())


def test_terms_vanish_when_student_matches_teacher():
    """With a teacher that says exactly what the student's exit says, KD and FT are zero."""
    torch.manual_seed(0)
    student = DistrEEStudent(tiny_student_config(branches=2, exits=[3]), 3, 4, 8).eval()
    teacher = WideResNet(WideResNetConfig(depth=10, width=0.5), 3, 4)
    obj = StudentObjective(student, teacher, DistillConfig(branch_dropout=0.0)).eval()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    with torch.no_grad():
        out = student(x)[0]
        mirror = TeacherOutput(out.logits.clone(), obj.projection(out.embedding).clone())
    obj._teacher[0] = lambda _: mirror
    _, terms = obj(x, y)
    assert terms["kd"].abs() < 1e-5 and terms["ft"].abs() < 1e-5 and terms["ce"] > 0
