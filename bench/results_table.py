"""Markdown tables for the README from `distree eval --json` outputs.

Usage: python bench/results_table.py NAME=EVAL.json [NAME=EVAL.json ...]
"""

from __future__ import annotations

import json
import sys

PAPER_SAVING = 0.276  # DistrEE paper, CIFAR-10 with WideResNet


def main() -> None:
    """Print the policy table and the per-exit / k-of-N tables of every evaluation."""
    runs = [(a.split("=", 1)[0], json.load(open(a.split("=", 1)[1]))) for a in sys.argv[1:]]
    print("| data set | system | test accuracy | drop (pp) | MACs / sample | saving |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in runs:
        t, full = r["teacher"], r["full"]
        print(f"| {name} | teacher (one device) | {t['accuracy']:.2%} | | {t['macs_per_sample'] / 1e6:.2f} M | |")
        full_m = full["macs_per_sample"] / 1e6
        print(f"| {name} | DistrEE full execution | {full['accuracy']:.2%} | 0 | {full_m:.2f} M | 0 |")
        for pol, p in r["policies"].items():
            if pol == "full":
                continue
            label = f"DistrEE `{pol}`" + (" (upper bound)" if pol == "oracle" else "")
            print(f"| {name} | {label} | {p['accuracy']:.2%} | {p['drop_pp']:.2f} | "
                  f"{p['macs_per_sample'] / 1e6:.2f} M | {p['saving']:.1%} |")  # fmt: skip
    print(f"| CIFAR-10 (paper) | DistrEE, feature difference | comparable to full | | | {PAPER_SAVING:.1%} |")
    for name, r in runs:
        print(f"\n{name}: per exit (all branches present) and with k of N branches present (full execution)\n")
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
        fd = r["branches_present"]["feature-diff"]
        print("| `feature-diff` accuracy | " + " | ".join(f"{v['accuracy']:.2%}" for v in fd.values()) + " |")
        print("| `feature-diff` saving | " + " | ".join(f"{v['saving']:.1%}" for v in fd.values()) + " |")


if __name__ == "__main__":
    main()
