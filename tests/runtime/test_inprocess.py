import torch
from conftest import tiny_student_config

from distree.data.augment import Normalization
from distree.models import DistrEEStudent
from distree.policies import decide_exits, exit_scores, make_policy
from distree.runtime.inprocess import early_exit_batch


def test_in_process_early_exit_matches_recorded_decisions():
    torch.manual_seed(0)
    model = DistrEEStudent(tiny_student_config(branches=2), 3, 4, 8).eval()
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    norm = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    policy = make_policy("max-prob")
    with torch.no_grad():
        outs = model(norm(images))
    logits = torch.stack([o.logits for o in outs])
    emb = torch.stack([o.embedding for o in outs])
    scores = exit_scores(policy, logits, emb)
    thresholds = [float(scores[0].median()), float(scores[1].median())]
    exits = decide_exits(scores, thresholds)
    preds, got_exits = early_exit_batch(model, policy, thresholds, images, norm)
    assert got_exits.tolist() == exits.tolist()
    assert preds.tolist() == logits[exits, torch.arange(40)].argmax(-1).tolist()
    assert 0 < int((exits == 0).sum()) < 40
