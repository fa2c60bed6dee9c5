"""Markdown tables for README.md and docs/results.md from `distree eval --json` outputs:
the same rows `distree eval` prints (distree.evaluation.results), with a data-set column.

Usage: python bench/tools/results_table.py NAME=EVAL.json [NAME=EVAL.json ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from distree.evaluation.results import (
    EvalResult,
    by_present_table,
    columns,
    exits_table,
    labelled,
    policies_table,
    present_table,
    targets_table,
)
from distree.tables import render

PAPER_SAVING = 0.276  # DistrEE paper, CIFAR-10 with WideResNet


def main() -> None:
    """Print the policy and target tables of every evaluation, then each one's per-exit,
    branches-present and k-of-N tables."""
    if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
        sys.exit(__doc__.strip().splitlines()[-1])
    runs, exported = {}, {}
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        r = EvalResult.model_validate_json(Path(path).read_text())
        (runs if r.backend == "torch" else exported)[name] = r
    headers, rows = labelled({n: policies_table(r) for n, r in runs.items()})
    paper = ["CIFAR-10 (paper)", "DistrEE", "feature difference", "≈ full execution", "", "", f"{PAPER_SAVING:.1%}"]
    rows.append(paper + [""] * (len(headers) - len(paper)))
    print("\n".join(render(headers, rows, markdown=True)))
    print("\nTest drop (pp) and saving when calibrated on validation for each target (90% confidence),")
    print("and the part of the saving each exit produced at the first target:\n")
    print("\n".join(render(*labelled({n: targets_table(r) for n, r in runs.items()}), markdown=True)))
    if exported:
        print("\nWhat ships: an export's branches under onnxruntime (heads fp32), thresholds fitted on its own")
        print("validation vectors, measured on the test split:\n")
        keep = ["policy", "test accuracy", "drop (pp)", "saving", "target met"]
        table = labelled({n: columns(policies_table(r), keep) for n, r in exported.items()})
        headers, rows = table
        backend = {n: r.backend.split(" (")[0] for n, r in exported.items()}
        print(
            "\n".join(
                render(
                    [*headers[:1], "backend", *headers[1:]],
                    [[row[0], backend[row[0]], *row[1:]] for row in rows],
                    markdown=True,
                )
            )
        )
    for name, r in runs.items():
        print(f"\n{name}: each exit with every branch present; full execution with k of N branches present;")
        print("each policy at its thresholds for k, drop against full execution with the same branches\n")
        for table in (exits_table(r), present_table(r), by_present_table(r)):
            print("\n".join(render(*table, markdown=True)) + "\n")


if __name__ == "__main__":
    main()
