import pytest
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


def test_branch_term_trains_each_branch_alone_through_every_head():
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    plain_loss, plain = _objective(branch_dropout=0.0)(x, y)
    obj = _objective(branch_dropout=0.0, branch_weight=0.5)
    loss, terms = obj(x, y)
    assert "branch" not in plain and terms["branch"] > 0
    torch.testing.assert_close(loss, plain_loss + 0.5 * terms["branch"])
    # The term is CE + KD of each branch alone at each exit, averaged over both.
    with torch.no_grad():
        t = obj._teacher[0](x)
        outs, vectors = obj.student.run_exits(x)
        expected = 0.0
        for head, per_branch in zip(obj.student.heads, vectors):
            for b in range(3):
                alone = head([v if i == b else None for i, v in enumerate(per_branch)])
                expected += torch.nn.functional.cross_entropy(alone.logits, y)
                expected += distillation_loss(alone.logits, t.logits, 4.0)
    torch.testing.assert_close(terms["branch"], expected / (3 * len(outs)))


def test_subset_term_trains_the_first_devices_of_a_random_wake_order_through_every_head():
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,))
    plain_loss, plain = _objective(branch_dropout=0.0)(x, y)
    obj = _objective(branch_dropout=0.0, subset_weight=0.5)
    torch.manual_seed(1)
    loss, terms = obj(x, y)
    assert "subset" not in plain and terms["subset"] > 0
    torch.testing.assert_close(loss, plain_loss + 0.5 * terms["subset"])
    # Sample i wakes branches start_i, start_i + 1, ... (mod 3): its first one, then two,
    # fused through each exit head; CE + KD of each, averaged.
    torch.manual_seed(1)
    start = torch.randint(0, 3, (6,))
    with torch.no_grad():
        t = obj._teacher[0](x)
        outs, vectors = obj.student.run_exits(x)
        expected = 0.0
        for m in (1, 2):
            for head, per_branch in zip(obj.student.heads, vectors):
                for i in range(6):
                    awake = {(int(start[i]) + j) % 3 for j in range(m)}
                    out = head([v[i : i + 1] if b in awake else None for b, v in enumerate(per_branch)])
                    expected += torch.nn.functional.cross_entropy(out.logits, y[i : i + 1]) / 6
                    expected += distillation_loss(out.logits, t.logits[i : i + 1], 4.0) / 6
    torch.testing.assert_close(terms["subset"], expected / (2 * len(outs)))


def test_terms_vanish_when_student_matches_teacher():
    """With a teacher that says exactly what the student's exit says, KD and FT are zero."""
    torch.manual_seed(0)
    student = DistrEEStudent(tiny_student_config(branches=2, exit_points=[3]), 3, 4, 8).eval()
    teacher = WideResNet(WideResNetConfig(depth=10, width=0.5), 3, 4)
    obj = StudentObjective(student, teacher, DistillConfig(branch_dropout=0.0)).eval()
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))
    with torch.no_grad():
        out = student(x)[0]
        mirror = TeacherOutput(out.logits.clone(), obj.projection(out.embedding).clone())
    obj._teacher[0] = lambda _: mirror
    _, terms = obj(x, y)
    assert terms["kd"].abs() < 1e-5 and terms["ft"].abs() < 1e-5 and terms["ce"] > 0


@pytest.mark.parametrize("padding, views", [(0, 0), (2, 3)])
def test_precomputed_teacher_targets_equal_the_live_teacher(padding, views):
    """The cached teacher outputs of a view give the loss the teacher gives on that view:
    the two flips without crops, and V seeded crop + flip views per image with crops."""
    from distree.data.augment import Normalization, apply_views
    from distree.training.objectives import TeacherTargets, ViewTable

    obj = _objective(branch_dropout=0.0)
    obj.eval()
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    norm = Normalization.fit(images)
    table = ViewTable(len(images), padding, flip=True, views=views, seed=0)
    assert table.per_image == (2 if padding == 0 else views)
    targets = TeacherTargets(obj._teacher[0], images, norm, table, batch_size=4, device=torch.device("cpu"))
    assert targets.logits.shape == (7 * table.per_image, 4)
    sample = torch.tensor([5, 0, 3, 3, 6])
    torch.manual_seed(1)
    picked, rows = table.draw(sample)
    assert torch.equal(rows // table.per_image, sample)
    x = apply_views(norm(images[sample]), padding, picked)
    y = torch.randint(0, 4, (5,))
    live_loss, _live = obj(x, y)
    obj.targets = targets
    cached_loss, cached = obj(x, y, rows)
    torch.testing.assert_close(cached_loss, live_loss, rtol=1e-5, atol=1e-5)
    assert cached["kd"] > 0
    # Another view of the same images gives a different loss: the lookup is not a no-op.
    other = sample * table.per_image + (rows + 1) % table.per_image
    other_loss, _ = obj(x, y, other)
    assert (other_loss - live_loss).abs() > 1e-4
    with pytest.raises(ValueError, match="pass the view rows"):
        obj(x, y)


def test_teacher_targets_stopped_at_the_deadline_continue_from_their_store(tmp_path, monkeypatch):
    """A computation stopped at the time limit keeps what it did; the next call computes
    only the rest and ends with the outputs of one uninterrupted pass. Another key (another
    teacher or view table) ignores the store."""
    import distree.training.objectives as objectives
    from distree.data.augment import Normalization
    from distree.training.checkpoint import TimeLimitReached
    from distree.training.objectives import TeacherTargets, ViewTable

    teacher = _objective(branch_dropout=0.0)._teacher[0]
    images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8)
    norm = Normalization.fit(images)
    table = ViewTable(len(images), 2, flip=True, views=2, seed=0)
    cpu = torch.device("cpu")
    whole = TeacherTargets(teacher, images, norm, table, batch_size=4, device=cpu)

    clock = iter(range(100))  # each batch reads the clock once; the deadline passes at the 4th
    monkeypatch.setattr(objectives, "monotonic", lambda: next(clock))
    store = tmp_path / "targets.safetensors"
    with pytest.raises(TimeLimitReached, match="6/11 images"):
        TeacherTargets(teacher, images, norm, table, batch_size=4, device=cpu, store=store, key="a", deadline=2.5)
    monkeypatch.undo()

    logs = []
    resumed = TeacherTargets(
        teacher, images, norm, table, batch_size=4, device=cpu, log=logs.append, store=store, key="a"
    )
    assert "6/11 training images read" in logs[0] and "each of 5 training images" in logs[1]
    assert torch.equal(resumed.logits, whole.logits) and torch.equal(resumed.features, whole.features)

    # Complete now: a third call computes nothing; another key starts over.
    logs.clear()
    TeacherTargets(teacher, images, norm, table, batch_size=4, device=cpu, log=logs.append, store=store, key="a")
    assert logs == ["student: the teacher's outputs on 11/11 training images read from " + str(store)]
    logs.clear()
    TeacherTargets(teacher, images, norm, table, batch_size=4, device=cpu, log=logs.append, store=store, key="b")
    assert "each of 11 training images" in logs[0]
