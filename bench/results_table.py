"""Markdown tables for the README from `distree eval --json` outputs.

Usage: python bench/results_table.py NAME=EVAL.json [NAME=EVAL.json ...]
"""

from __future__ import annotations

import json
import sys

from distree.policies import make_policy

PAPER_SAVING = 0.276  # DistrEE paper, CIFAR-10 with WideResNet
CRITERION = {
    "feature-diff": "feature difference (cosine of consecutive fused embeddings), no softmax",
    "feature-agreement": "agreement of the devices' features at the exit (mean pairwise cosine), no softmax",
    "conf-then-feature-diff": "softmax confidence at exit 0, feature difference after",
    "max-prob": "softmax confidence",
    "entropy": "softmax entropy",
    "patience": "consecutive exits agree on the class",
    "oracle": "the labels (upper bound)",
}


def main() -> None:
    """Print the policy table and the per-exit / k-of-N tables of every evaluation."""
    runs = [(a.split("=", 1)[0], json.load(open(a.split("=", 1)[1]))) for a in sys.argv[1:]]
    print("| data set | system | criterion | test accuracy | drop (pp) | MACs / sample | saving | AUROC per exit |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for name, r in runs:
        t, full = r["teacher"], r["full"]
        print(f"| {name} | teacher (one device) | | {t['accuracy']:.2%} | | {t['macs_per_sample'] / 1e6:.2f} M | | |")
        full_m = full["macs_per_sample"] / 1e6
        print(f"| {name} | DistrEE full execution | | {full['accuracy']:.2%} | 0 | {full_m:.2f} M | 0 | |")
        for pol, p in r["policies"].items():
            policy = make_policy(pol)
            if not policy.reads_exits:  # full execution: its row is above
                continue
            reads_labels = policy.needs_labels  # its score is the answer: no AUROC to show
            auroc = "" if reads_labels else " ".join("-" if a is None else f"{a:.2f}" for a in p["auroc"])
            print(f"| {name} | DistrEE `{pol}` | {CRITERION.get(pol, '')} | {p['accuracy']:.2%} | {p['drop_pp']:.2f} | "
                  f"{p['macs_per_sample'] / 1e6:.2f} M | {p['saving']:.1%} | {auroc} |")  # fmt: skip
    print(f"| CIFAR-10 (paper) | DistrEE | feature difference | comparable to full | | | {PAPER_SAVING:.1%} | |")
    print("\nTest drop and saving when calibrated for each target (90% confidence), and the part of the")
    print("saving each exit produced at the 0.5-point target:\n")
    targets = list(next(iter(runs))[1]["policies"]["max-prob"]["at_targets"])
    print(
        "| data set | policy | "
        + " | ".join(f"{t} pp: drop / saving" for t in targets)
        + " | saving by exit (0.5 pp) |"
    )
    print("|---|---|" + "---:|" * len(targets) + "---|")
    for name, r in runs:
        for pol, p in r["policies"].items():
            if "at_targets" not in p:
                continue
            cells = " | ".join(f"{v['drop_pp']:.2f} / {v['saving']:.1%}" for v in p["at_targets"].values())
            by_exit = " ".join(f"{x:.1%}" for x in p["at_targets"][targets[0]]["saving_by_exit"])
            print(f"| {name} | `{pol}` | {cells} | {by_exit} |")
    for name, r in runs:
        print(f"\n{name}: per exit (all branches present), and with k of N branches present: full execution,")
        print("and each policy at its thresholds for k, drop against full execution with the same branches\n")
        print("| exit | accuracy | cumulative MACs | of full |")
        print("|---:|---:|---:|---:|")
        for e, x in enumerate(r["exits"]):
            frac = x["macs_per_sample"] / r["full"]["macs_per_sample"]
            print(f"| {e} | {x['accuracy']:.2%} | {x['macs_per_sample'] / 1e6:.2f} M | {frac:.0%} |")
        print()
        print("| branches present | " + " | ".join(r["devices_present"]) + " |")
        print("|---|" + "---:|" * len(r["devices_present"]))
        print(
            "| accuracy (mean over subsets) | " + " | ".join(f"{a:.2%}" for a in r["devices_present"].values()) + " |"
        )
        for pol in ("feature-diff", "feature-agreement", "conf-then-feature-diff", "max-prob"):
            by_k = r["branches_present"][pol].values()
            print(
                f"| `{pol}` drop / saving | "
                + " | ".join(f"{v['drop_pp']:.2f} / {v['saving']:.1%}" for v in by_k)
                + " |"
            )


if __name__ == "__main__":
    main()
