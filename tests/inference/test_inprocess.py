import pytest
import torch
from conftest import tiny_student_config

from distree.data.augment import Normalization
from distree.inference.inprocess import early_exit_batch
from distree.inference.records import exit_costs
from distree.models import DistrEEStudent, ExitRecords
from distree.policies import ExitThresholds, decide_exits, exit_scores, make_policy


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
