import pytest
import torch

from distree.models import ExitHead


def test_masked_branch_equals_absent_branch():
    torch.manual_seed(0)
    head = ExitHead([4, 6, 5], embed_dim=8, num_classes=3)
    v = [torch.randn(5, 4), torch.randn(5, 6), torch.randn(5, 5)]
    without = head([v[0], None, v[2]])
    garbage = [v[0], torch.full((5, 6), float("nan")), v[2]]
    mask = torch.tensor([[True, False, True]] * 5)
    masked = head(garbage, mask)
    torch.testing.assert_close(masked.logits, without.logits)
    torch.testing.assert_close(masked.embedding, without.embedding)


def test_per_sample_mask_mixes_subsets():
    torch.manual_seed(0)
    head = ExitHead([4, 4], embed_dim=8, num_classes=3)
    v = [torch.randn(2, 4), torch.randn(2, 4)]
    out = head(v, torch.tensor([[True, False], [True, True]]))
    torch.testing.assert_close(out.logits[0], head([v[0][:1], None]).logits[0])
    torch.testing.assert_close(out.logits[1], head([v[0][1:], v[1][1:]]).logits[0])


def test_no_branch_is_an_error():
    head = ExitHead([4, 4], embed_dim=8, num_classes=3)
    with pytest.raises(ValueError, match="at least one"):
        head([None, None])
    with pytest.raises(ValueError, match="every sample"):
        head([torch.randn(1, 4), torch.randn(1, 4)], torch.tensor([[False, False]]))
