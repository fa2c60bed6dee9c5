"""Recorded outputs and costs of a schedule over depth and devices."""

from __future__ import annotations

import torch
from conftest import tiny_student_config

from distree.evaluation.measures import calibration_error
from distree.inference.records import (
    branch_vectors,
    exit_costs,
    fuse_awake,
    fuse_exits,
    fuse_schedule,
    schedule_costs,
)
from distree.models import DistrEEStudent
from distree.policies.schedule import Schedule


def _model_and_vectors(branches: int = 3):
    torch.manual_seed(0)
    model = DistrEEStudent(tiny_student_config(branches=branches), 3, 4, 8).eval()
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    return model, branch_vectors(model, images, lambda x: x.float() / 255, 5, torch.device("cpu"))


def test_the_depth_only_schedule_records_what_every_exit_does_with_every_branch():
    model, vectors = _model_and_vectors()
    starts = torch.arange(10) % 3
    depth = Schedule.depth_only(model.num_exits, 3)
    rec, exits = fuse_schedule(model, vectors, depth, starts), fuse_exits(model, vectors)
    torch.testing.assert_close(rec.logits, exits.logits)
    torch.testing.assert_close(rec.embeddings, exits.embeddings)
    costs = schedule_costs(model, "max-prob", depth, starts)
    torch.testing.assert_close(costs, exit_costs(model, "max-prob")[:, None].expand(-1, 10))


def test_each_sample_is_fused_with_the_devices_awake_from_its_own_start():
    model, vectors = _model_and_vectors()
    last = model.num_exits - 1
    schedule = Schedule.parse(f"0:1 0:2 {last}:3")
    starts = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 0])
    rec = fuse_schedule(model, vectors, schedule, starts)
    for i, s in enumerate(starts.tolist()):
        one = [[t[i : i + 1] for t in per_exit] for per_exit in vectors]  # sample i's vectors, [branch][exit]
        alone = fuse_exits(model, one, [s])
        pair = fuse_exits(model, one, [s, (s + 1) % 3])
        torch.testing.assert_close(rec.logits[0, i], alone.logits[0, 0])
        torch.testing.assert_close(rec.logits[1, i], pair.logits[0, 0])
    torch.testing.assert_close(rec.logits[2], fuse_exits(model, vectors).logits[last])
    # The second step wakes a second device at the same exit: it pays its stage 0 and a second head.
    costs = schedule_costs(model, "max-prob", schedule, starts)
    stage0, head0 = model.macs.stage[0][0], model.macs.head[0]
    assert costs[:2, 0].tolist() == [stage0 + head0, 2 * stage0 + 2 * head0]


def test_every_device_awake_is_every_exit_with_every_branch_and_one_awake_is_the_start_alone():
    model, vectors = _model_and_vectors()
    starts = torch.arange(10) % 3
    torch.testing.assert_close(fuse_awake(model, vectors, 3, starts).logits, fuse_exits(model, vectors).logits)
    alone = fuse_awake(model, vectors, 1, starts)
    one = [[t[4:5] for t in per_exit] for per_exit in vectors]  # sample 4 starts on branch 1
    torch.testing.assert_close(alone.logits[:, 4], fuse_exits(model, one, [1]).logits[:, 0])


def test_calibration_error_is_the_gap_between_confidence_and_accuracy():
    labels = torch.tensor([0, 0, 0, 0])
    sure_right = torch.tensor([[20.0, 0.0]]).repeat(4, 1)
    assert calibration_error(sure_right, labels) < 1e-6
    assert abs(calibration_error(sure_right, 1 - labels) - 1.0) < 1e-6
    # Confidence 0.5 (equal logits), half of them right: calibrated.
    even = torch.zeros(4, 2)
    assert calibration_error(even, torch.tensor([0, 1, 0, 1])) < 1e-6
