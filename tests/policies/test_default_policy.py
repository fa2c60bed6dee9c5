"""The default policy is chosen by measurement: on every shipped model's recorded
evaluation (``distree eval``'s JSON, made by ``make results``) it keeps within its accuracy
target and saves within a point of the policy that saves most there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distree.config import DEFAULT_POLICY
from distree.policies.registry import policy_names

ROOT = Path(__file__).parents[2]
SHIPPED = sorted(p.parent.name for p in (ROOT / "models").glob("*/eval.json"))
#: Savings closer than this are within what retraining with another seed moves them.
NOISE_POINTS = 1.0


def test_there_are_shipped_evaluations():
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("model", SHIPPED)
def test_the_default_saves_about_the_most_within_its_target(model):
    record = json.loads((ROOT / "models" / model / "eval.json").read_text())
    target = record["target"]["max_drop_pp"]
    named = {name: r for name, r in record["policies"].items() if name in policy_names(calibrated=True)}
    within = {name: r["saving"] for name, r in named.items() if r["drop_pp"] <= target}
    assert DEFAULT_POLICY in within, f"{DEFAULT_POLICY} drops more than {target} points on {model}"
    best = max(within, key=within.get)
    assert 100 * (within[best] - within[DEFAULT_POLICY]) <= NOISE_POINTS, (
        f"on {model}, {best} saves {within[best]:.1%} and the default {DEFAULT_POLICY} {within[DEFAULT_POLICY]:.1%}"
    )
