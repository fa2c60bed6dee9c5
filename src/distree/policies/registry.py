"""Policies by name."""

from __future__ import annotations

import torch

from distree.policies.base import ExitPolicy
from distree.policies.scores import (
    ConfThenFeatureDiff,
    Entropy,
    FeatureAgreement,
    FeatureDiff,
    Full,
    MaxProb,
    Oracle,
    Patience,
)

POLICIES = [
    "feature-diff",
    "feature-agreement",
    "conf-then-feature-diff",
    "max-prob",
    "entropy",
    "patience",
    "full",
    "oracle",
]
#: What the runtime and the demo use unless told otherwise: the feature criterion that
#: predicts best whether an exit is right (docs/policies.md). Confidence (`max-prob`)
#: saves more on the shipped models; the README says by how much.
DEFAULT_POLICY = "feature-agreement"


def make_policy(name: str, labels: torch.Tensor | None = None) -> ExitPolicy:
    """The policy called ``name`` (``oracle`` needs the labels)."""
    factories = {
        "feature-agreement": FeatureAgreement,
        "feature-diff": FeatureDiff,
        "conf-then-feature-diff": ConfThenFeatureDiff,
        "max-prob": MaxProb,
        "entropy": Entropy,
        "patience": Patience,
        "full": Full,
        "oracle": lambda: Oracle(labels),
    }
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    return factories[name]()
