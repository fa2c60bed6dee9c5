"""The policies: confidence, entropy, patience, the feature criteria (the devices'
agreement; the difference of consecutive fused embeddings, alone and after confidence at
the first exit), full execution, oracle."""

from __future__ import annotations

import math

import numpy as np

from distree.arrays import is_torch_array, namespace
from distree.exits import Array, ExitRecords
from distree.policies.base import ExitPolicy
from distree.policies.registry import register_policy

# The scores take torch tensors (a model in PyTorch) and numpy arrays (an ONNX export,
# served without torch). On torch tensors they call torch's own kernels, so a torch
# executor's scores are bit for bit those calibration recorded; numpy computes the same
# formulas in float32 (tests/policies/test_scores_numpy.py holds them equal within rounding).


def softmax(logits: Array) -> Array:
    """Class probabilities (B, K) of logits (B, K), in float32."""
    if is_torch_array(logits):
        return logits.float().softmax(-1)
    return np.exp(log_softmax(logits))


def log_softmax(logits: Array) -> Array:
    """Log class probabilities (B, K) of logits (B, K), in float32."""
    if is_torch_array(logits):
        return logits.float().log_softmax(-1)
    x = np.asarray(logits, dtype=np.float32)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def cosine(a: Array, b: Array, eps: float = 1e-8) -> Array:
    """Cosine (B,) of rows of (B, D) a and b, in float32 (0 for a zero row)."""
    if is_torch_array(a):
        import torch.nn.functional as F  # torch is there: a torch tensor came in

        return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=eps)
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    na = np.maximum(np.linalg.norm(a, axis=-1), eps)
    nb = np.maximum(np.linalg.norm(b, axis=-1), eps)
    return ((a / na[:, None]) * (b / nb[:, None])).sum(-1)


def _constant(like: Array, value: float) -> Array:
    """(B,) float32 ``value`` for the B rows of ``like``."""
    xp = namespace(like)
    return xp.full((like.shape[0],), value, dtype=xp.float32)


@register_policy
class FeatureDiff(ExitPolicy):
    """Feature difference: stop when the fused embedding stops changing between exits.

    Score at exit e >= 1 is cos(z_e, z_{e-1}) - 1 (0 when z did not move). It uses no
    softmax and no classifier. The first exit has nothing to compare with, so it never
    stops there.
    """

    name = "feature-diff"
    criterion = "change of the fused embedding between exits (cosine)"

    def score(self, e: int, seen: ExitRecords) -> Array:
        if e == 0:
            return _constant(seen.logits[0], -math.inf)
        z = seen.embeddings
        return cosine(z[e], z[e - 1]) - 1.0


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

    def score(self, e: int, seen: ExitRecords) -> Array:
        if seen.agreement is None:
            raise ValueError("feature-agreement needs the exit heads' agreement records")
        xp = namespace(seen.agreement[e])
        return xp.astype(seen.agreement[e], xp.float32)


@register_policy
class ConfThenFeatureDiff(FeatureDiff):
    """Softmax confidence at the first exit, feature difference at every later one.

    A mix of two criteria, named for both: on the shipped models most of its saving comes
    from the first exit, that is from confidence (docs/policies.md has the split).
    """

    name = "conf-then-feature-diff"
    criterion = "softmax confidence at exit 0, then feature difference"

    def score(self, e: int, seen: ExitRecords) -> Array:
        if e == 0:
            return MaxProb().score(0, seen)
        return super().score(e, seen)


@register_policy
class MaxProb(ExitPolicy):
    """Softmax confidence: the largest class probability."""

    name = "max-prob"
    criterion = "softmax confidence"

    def score(self, e: int, seen: ExitRecords) -> Array:
        return namespace(seen.logits[e]).max(softmax(seen.logits[e]), axis=-1)


@register_policy
class Entropy(ExitPolicy):
    """Negative entropy of the softmax (higher = more certain)."""

    name = "entropy"
    criterion = "softmax entropy"

    def score(self, e: int, seen: ExitRecords) -> Array:
        logp = log_softmax(seen.logits[e])
        xp = namespace(logp)
        return xp.sum(xp.exp(logp) * logp, axis=-1)


@register_policy
class Patience(ExitPolicy):
    """How many consecutive exits, ending at this one, predict the same class (1..e+1)."""

    name = "patience"
    criterion = "consecutive exits agree on the class"

    def score(self, e: int, seen: ExitRecords) -> Array:
        xp = namespace(seen.logits[e])
        preds = [xp.argmax(seen.logits[i], axis=-1) for i in range(e + 1)]
        run = xp.ones(preds[e].shape, dtype=xp.float32)
        alive = xp.ones(preds[e].shape, dtype=xp.bool)
        for i in range(e - 1, -1, -1):
            alive = alive & (preds[i] == preds[e])
            run = run + xp.astype(alive, xp.float32)
        return run


@register_policy
class Full(ExitPolicy):
    """Full execution: never stop before the last exit."""

    name = "full"
    criterion = "never stops early"
    fixed_threshold = float("inf")
    reads_exits = False

    def score(self, e: int, seen: ExitRecords) -> Array:
        return _constant(seen.logits[e], -math.inf)


@register_policy
class Oracle(ExitPolicy):
    """The earliest exit that is right (evaluation only: it reads the labels)."""

    name = "oracle"
    criterion = "the labels (upper bound)"
    fixed_threshold = 0.0
    needs_labels = True

    def score(self, e: int, seen: ExitRecords) -> Array:
        if self.labels is None:
            raise ValueError("the oracle policy needs the labels; it exists for evaluation only")
        xp = namespace(seen.logits[e])
        right = xp.argmax(seen.logits[e], axis=-1) == self.labels
        return xp.where(right, _constant(seen.logits[e], 0.0), _constant(seen.logits[e], -math.inf))
