"""Which feature criterion carries signal? Candidates for a softmax-free exit score, measured.

For one trained run, every candidate scores every exit from the branches' vectors; each
is measured the same way as `distree eval` measures policies: per-exit AUROC of the score
for "this exit's prediction is right" (test split), and the test drop and saving when
calibrated on the validation split for 0.5 / 1 / 2 points at 90% confidence.

  max-prob        softmax confidence (the reference; not a feature criterion)
  cos-fused       cosine of consecutive exits' fused embeddings z_e, z_{e-1}; first exit never stops
  cos-aligned     the same after mapping z to the teacher's feature space (a projection fitted
                  by ridge regression on training images: the space the feature-transfer loss aligns)
  agree-heads     mean pairwise cosine of the branches' own embeddings at the exit (each branch
                  alone through the exit head's projection and normalisation)
  agree-aligned   the same in the teacher-aligned space
  agree+cos       agree-aligned + cos-aligned (agree-aligned alone at the first exit)
  learned-diff    a small MLP per exit over the difference vectors only (aligned z_e - z_{e-1},
                  each branch's aligned embedding minus the fused one), fitted on training images
                  to predict "this exit is right"
  proto-margin    in the aligned space, cosine to the nearest class prototype (mean teacher
                  feature of the class) minus cosine to the second nearest: confidence measured
                  in feature space, not a difference of features

Usage: python bench/policies/feature_criteria.py RUN_DIR --data PATH [--train-samples 10000] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distree.data import load_data
from distree.evaluation.measures import REPORTED_TARGETS_PP, auroc
from distree.inference.records import branch_vectors, exit_costs, fuse_exits
from distree.policies.calibration import calibrate, outcome
from distree.provenance import machine, provenance
from distree.run import RunDir


class Spaces:
    """A split's fused and per-branch embeddings, raw and mapped to the teacher's space."""

    def __init__(self, student, vectors, align):
        rec = fuse_exits(student, vectors)
        self.logits, self.z = rec.logits, rec.embeddings  # (E, N, K), (E, N, D)
        with torch.no_grad():
            self.branch_z = torch.stack(
                [
                    torch.stack([h.norm(h.proj[b](vectors[b][e])) for b in range(student.num_branches)])
                    for e, h in enumerate(student.heads)
                ]
            )  # (E, B, N, D)
        self.a, self.branch_a = align(self.z), align(self.branch_z)


def pairwise_cosine(v: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine (N,) of (B, N, D) vectors."""
    v = F.normalize(v, dim=-1)
    pairs = list(itertools.combinations(range(v.shape[0]), 2))
    return sum((v[i] * v[j]).sum(-1) for i, j in pairs) / len(pairs)


def diff_features(sp: Spaces, e: int) -> torch.Tensor:
    """The learned scorer's input at exit e: difference vectors only."""
    step = sp.a[e] - sp.a[e - 1] if e else torch.zeros_like(sp.a[e])
    dev = (sp.branch_a[e] - sp.a[e][None]).permute(1, 0, 2).flatten(1)
    return torch.cat([step, dev], -1)


def fit_scorer(x: torch.Tensor, right: torch.Tensor, steps: int = 300) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(m.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(m(x).squeeze(-1), right.float()).backward()
        opt.step()
    return m.eval()


def main() -> None:
    """Print one row per candidate."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--data")
    ap.add_argument("--train-samples", type=int, default=10_000, help="training images for the fitted parts")
    ap.add_argument("--json", help="also write the table, with the run, the seconds and provenance, here")
    args = ap.parse_args()
    t0 = time.perf_counter()
    run = RunDir(args.run_dir)
    meta = run.read_meta()
    splits = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed)
    student, teacher = run.load_student().eval(), run.load_teacher().eval()
    norm, bs, cpu = meta.data.normalization, meta.config.eval_batch_size, torch.device("cpu")
    pick = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[: args.train_samples]
    sets = {
        "train": (splits.train.images[pick], splits.train.labels[pick]),
        "val": (splits.val.images, splits.val.labels),
        "test": (splits.test.images, splits.test.labels),
    }
    vectors = {k: branch_vectors(student, x, norm, bs, cpu) for k, (x, _) in sets.items()}
    with torch.no_grad():
        tx = sets["train"][0]
        t_feat = torch.cat([teacher(norm(tx[i : i + bs])).features for i in range(0, len(tx), bs)])
    t_unit = F.normalize(t_feat, dim=-1)

    # One projection for every exit, as in training: fused embedding -> teacher feature direction.
    z_train = fuse_exits(student, vectors["train"]).embeddings
    zz = torch.cat([z_train.flatten(0, 1), torch.ones(z_train.shape[0] * z_train.shape[1], 1)], 1)
    target = t_unit.repeat(z_train.shape[0], 1)
    w = torch.linalg.solve(zz.T @ zz + 1e-2 * torch.eye(zz.shape[1]), zz.T @ target)

    def align(z: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([z, torch.ones(*z.shape[:-1], 1)], -1) @ w, dim=-1)

    sp = {k: Spaces(student, v, align) for k, v in vectors.items()}
    right = {k: sp[k].logits.argmax(-1) == sets[k][1] for k in sets}
    y_train = sets["train"][1]
    protos = F.normalize(torch.stack([t_unit[y_train == c].mean(0) for c in range(splits.num_classes)]), dim=-1)
    num_exits = student.num_exits
    scorers = [fit_scorer(diff_features(sp["train"], e), right["train"][e]) for e in range(num_exits - 1)]

    def candidates(s: Spaces) -> dict[str, torch.Tensor]:
        n = s.z.shape[1]
        never = torch.full((n,), float("-inf"))
        cos_f = [never] + [F.cosine_similarity(s.z[e], s.z[e - 1], dim=-1) for e in range(1, num_exits)]
        cos_a = [never] + [(s.a[e] * s.a[e - 1]).sum(-1) for e in range(1, num_exits)]
        agree_a = [pairwise_cosine(s.branch_a[e]) for e in range(num_exits)]
        with torch.no_grad():
            learned = [scorers[e](diff_features(s, e)).squeeze(-1) for e in range(num_exits - 1)] + [never]
        top2 = [(s.a[e] @ protos.T).topk(2, dim=-1).values for e in range(num_exits)]
        return {
            "max-prob": F.softmax(s.logits, -1).amax(-1),
            "cos-fused": torch.stack(cos_f),
            "cos-aligned": torch.stack(cos_a),
            "agree-heads": torch.stack([pairwise_cosine(s.branch_z[e]) for e in range(num_exits)]),
            "agree-aligned": torch.stack(agree_a),
            "agree+cos": torch.stack([agree_a[0]] + [agree_a[e] + cos_a[e] for e in range(1, num_exits)]),
            "learned-diff": torch.stack(learned),
            "proto-margin": torch.stack([t[:, 0] - t[:, 1] for t in top2]),
        }

    scores = {k: candidates(sp[k]) for k in ("val", "test")}
    costs, full = exit_costs(student, "max-prob"), float(student.macs.full())
    full_acc = float(right["test"][-1].float().mean())
    print(
        f"run {run.path} ({splits.source}); exit accuracy (test) "
        f"{[round(float(r.float().mean()), 4) for r in right['test']]}; machine {machine()}"
    )
    head = "".join(f"{f'AUROC {e}':>9}" for e in range(num_exits - 1))
    tgt = "".join(f"{f'{t} pp: drop / saving':>24}" for t in REPORTED_TARGETS_PP)
    print(f"{'candidate':<15}{head}{tgt}")
    rows = {}
    for name in scores["test"]:
        au = [auroc(scores["test"][name][e], right["test"][e]) for e in range(num_exits - 1)]
        cells, at_targets = [], []
        for t in REPORTED_TARGETS_PP:
            cal = calibrate(scores["val"][name], right["val"], costs, full, max_drop_pp=t)
            o = outcome(scores["test"][name], right["test"], costs, cal.thresholds)
            drop, saving = round((full_acc - o.accuracy) * 100, 2) + 0.0, 1 - o.macs_per_sample / full
            at_targets.append({"target_pp": t, "test_drop_pp": drop, "saving": round(saving, 4)})
            cells.append(f"{drop:>15.2f} / {saving:>6.1%}")
        rows[name] = {"auroc": [round(a, 6) for a in au], "at_targets": at_targets}
        print(f"{name:<15}" + "".join(f"{a:>9.3f}" for a in au) + "".join(cells))
    seconds = time.perf_counter() - t0
    print(f"({seconds:.0f} s)")
    if args.json:
        result = {
            "run": str(run.path),
            "data": splits.source,
            "train_samples": len(pick),
            "exit_accuracy_test": [round(float(r.float().mean()), 4) for r in right["test"]],
            "candidates": rows,
            "seconds": round(seconds, 1),
            "provenance": provenance().model_dump(),
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
