"""The policies: confidence, entropy, patience, the feature criteria (the devices'
agreement; the difference of consecutive fused embeddings, alone and after confidence at
the first exit), full execution, oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distree.models.heads import ExitRecords
from distree.policies.base import ExitPolicy
from distree.policies.registry import register_policy


@register_policy
class FeatureDiff(ExitPolicy):
    """Feature difference: stop when the fused embedding stops changing between exits.

    Score at exit e >= 1 is cos(z_e, z_{e-1}) - 1 (0 when z did not move). It uses no
    softmax and no classifier. The first exit has nothing to compare with, so it never
    stops there.
    """

    name = "feature-diff"
    criterion = "change of the fused embedding between exits (cosine)"

    def score(self, e: int, seen: ExitRecords) -> torch.Tensor:  # noqa: D102
        if e == 0:
            return torch.full((seen.logits[0].shape[0],), float("-inf"))
        z = seen.embeddings
        return F.cosine_similarity(z[e].float(), z[e - 1].float(), dim=-1) - 1.0


@register_policy
class FeatureAgreement(ExitPolicy):
    """The devices' agreement: stop when the branches' own features at this exit point the
    same way.

    Score: the mean pairwise cosine of the present branches' embeddings (each branch's
    projection through the exit head's normalisation), computed by the exit head. A
    difference of features across the devices rather than across exits, so it is defined
    at the first exit too; no softmax and no classifier. With one branch present there is
    nothing to compare, and it never stops early.
    """

    name = "feature-agreement"
    criterion = "the branches' features agree (mean pairwise cosine)"
    reads_agreement = True

    def score(self, e: int, seen: ExitRecords) -> torch.Tensor:  # noqa: D102
        if seen.agreement is None:
            raise ValueError("feature-agreement needs the exit heads' agreement records")
        return seen.agreement[e].float()


@register_policy
class ConfThenFeatureDiff(FeatureDiff):
    """Softmax confidence at the first exit, feature difference at every later one.

    A mix of two criteria, named for both: on the shipped models most of its saving comes
    from the first exit, that is from confidence (docs/policies.md has the split).
    """

    name = "conf-then-feature-diff"
    criterion = "softmax confidence at exit 0, then feature difference"

    def score(self, e: int, seen: ExitRecords) -> torch.Tensor:  # noqa: D102
        if e == 0:
            return MaxProb().score(0, seen)
        return super().score(e, seen)


@register_policy
class MaxProb(ExitPolicy):
    """Softmax confidence: the largest class probability."""

    name = "max-prob"
    criterion = "softmax confidence"

    def score(self, e: int, seen: ExitRecords) -> torch.Tensor:  # noqa: D102
        return F.softmax(seen.logits[e].float(), dim=-1).amax(-1)


@register_policy
class Entropy(ExitPolicy):
    """Negative entropy of the softmax (higher = more certain)."""

    name = "entropy"
    criterion = "softmax entropy"

    def score(self, e: int, seen: ExitRecords) -> torch.Tensor:  # noqa: D102
        logp = F.log_softmax(seen.logits[e].float(), dim=-1)
        return (logp.exp() * logp).sum(-1)


@register_policy
class Patience(ExitPolicy):
    """How many consecutive exits, ending at this one, predict the same class (1..e+1)."""

    name = "patience"
    criterion = "consecutive exits agree on the class"

    def score(self, e: int, seen: ExitRecords) -> torch.Tensor:  # noqa: D102
        preds = [seen.logits[i].argmax(-1) for i in range(e + 1)]
        run = torch.ones_like(preds[e], dtype=torch.float32)
        alive = torch.ones_like(preds[e], dtype=torch.bool)
        for i in range(e - 1, -1, -1):
            alive &= preds[i] == preds[e]
            run += alive.float()
        return run


@register_policy
class Full(ExitPolicy):
    """Full execution: never stop before the last exit."""

    name = "full"
    criterion = "never stops early"
    fixed_threshold = float("inf")
    reads_exits = False

    def score(self, e: int, seen: ExitRecords) -> torch.Tensor:  # noqa: D102
        return torch.full((seen.logits[e].shape[0],), float("-inf"))


@register_policy
class Oracle(ExitPolicy):
    """The earliest exit that is right (evaluation only: it reads the labels)."""

    name = "oracle"
    criterion = "the labels (upper bound)"
    fixed_threshold = 0.0
    needs_labels = True

    def score(self, e: int, seen: ExitRecords) -> torch.Tensor:  # noqa: D102
        if self.labels is None:
            raise ValueError("the oracle policy needs the labels; it exists for evaluation only")
        return torch.where(seen.logits[e].argmax(-1) == self.labels, 0.0, float("-inf"))
