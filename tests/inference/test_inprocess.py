import pytest
import torch
from conftest import tiny_student_config

from distree.data.augment import Normalization
from distree.inference.costs import ExitCosts
from distree.inference.inprocess import early_exit_batch
from distree.inference.records import branch_vectors, exit_costs, fuse_schedule, schedule_costs
from distree.inference.stage_loop import StageLoop, run_in_turn
from distree.models import DistrEEStudent, ExitRecords, HeadFusion
from distree.policies import ExitThresholds, decide_exits, exit_scores, make_policy
from distree.policies.schedule import Schedule, awake_branches


@pytest.mark.parametrize("name", ["max-prob", "feature-agreement", "conf-then-feature-diff"])
def test_in_process_early_exit_matches_recorded_decisions(name):
    # The stage loop drops exited rows between stages; its decisions must equal the ones
    # made on the whole batch's recorded outputs, for scores that read every record field.
    torch.manual_seed(0)
    model = DistrEEStudent(tiny_student_config(branches=2), 3, 4, 8).eval()
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    policy = make_policy(name)
    with torch.no_grad():
        outs = model(norm(images))
    rec = ExitRecords.of(outs)
    scores = exit_scores(policy, rec)
    thresholds = [float(scores[0].median()), float(scores[1].median())]
    exits = decide_exits(scores, thresholds)
    out = early_exit_batch(model, policy, ExitThresholds.same(thresholds, 2), images, norm)
    assert out.exit.tolist() == exits.tolist()
    assert out.predictions.tolist() == rec.logits[exits, torch.arange(40)].argmax(-1).tolist()
    assert out.macs.tolist() == exit_costs(model, name)[exits].long().tolist()
    assert 0 < int((exits == 0).sum()) < 40


@pytest.mark.parametrize("start", [0, 2])
@pytest.mark.parametrize("schedule", ["0:1 1:1 1:3 2:3", "0:2 1:3 2:3", "0:1 0:3 1:3 2:3"])
def test_in_process_schedule_matches_recorded_steps(schedule, start):
    # A schedule wakes devices late: the in-process loop runs only what each step needs,
    # and must decide, answer and charge as the records of its steps do offline.
    torch.manual_seed(1)
    model = DistrEEStudent(tiny_student_config(branches=3), 3, 4, 8).eval()
    images = torch.randint(0, 256, (48, 3, 8, 8), dtype=torch.uint8)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    policy = make_policy("max-prob")
    plan = Schedule.parse(schedule)
    starts = torch.full((48,), start)
    vectors = branch_vectors(model, images, norm, 48, torch.device("cpu"))
    rec = fuse_schedule(model, vectors, plan, starts)
    scores = exit_scores(policy, rec)
    per_step = [float(s.median()) for s in scores[:-1]]
    stop = decide_exits(scores, per_step)
    thresholds = ExitThresholds(ExitThresholds.same([0.0, 0.0], 3).by_present, schedule=plan, per_step=per_step)
    loop = StageLoop(
        HeadFusion(model.heads), policy, thresholds, ExitCosts(model.macs, policy), 48, num_exits=3, start=start
    )
    with torch.no_grad():
        out = run_in_turn(loop, model.branches, norm(images))
    steps = plan.steps
    assert out.exit.tolist() == [steps[i].exit for i in stop.tolist()]
    assert len(set(stop.tolist())) >= 2
    assert out.predictions.tolist() == rec.logits[stop, torch.arange(48)].argmax(-1).tolist()
    assert out.macs.tolist() == schedule_costs(model, "max-prob", plan, starts)[stop, torch.arange(48)].long().tolist()
    assert out.branches == [list(awake_branches(steps[i], start, 3)) for i in stop.tolist()]
