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
    torch.testing.assert_close(masked.agreement, without.agreement)


def test_agreement_is_the_mean_pairwise_cosine_of_the_branches_own_embeddings():
    torch.manual_seed(0)
    head = ExitHead([4, 6, 5], embed_dim=8, num_classes=3).eval()
    v = [torch.randn(5, 4), torch.randn(5, 6), torch.randn(5, 5)]
    with torch.no_grad():
        own = [head.norm(head.proj[b](v[b])) for b in range(3)]
        pairs = [(0, 1), (0, 2), (1, 2)]
        expected = sum(torch.cosine_similarity(own[i], own[j], dim=-1) for i, j in pairs) / 3
        torch.testing.assert_close(head(v).agreement, expected)
        # Two branches: their one cosine. Per-sample masks give each row its own subset.
        two = torch.cosine_similarity(own[0], own[2], dim=-1)
        torch.testing.assert_close(head([v[0], None, v[2]]).agreement, two)
        mask = torch.tensor([[True, True, True], [True, False, True], [False, True, False]] + [[True] * 3] * 2)
        got = head(v, mask).agreement
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], two[1])
    assert got[2] == float("-inf")  # one branch: nothing to compare
    # Asked not to, the head leaves it out and fuses exactly as before.
    with torch.no_grad():
        plain = head(v, mask, agreement=False)
        full = head(v, mask)
    assert plain.agreement is None
    assert torch.equal(plain.logits, full.logits) and torch.equal(plain.embedding, full.embedding)
    # Identical branches agree fully.
    same = ExitHead([4, 4], embed_dim=8, num_classes=3)
    same.proj[1].load_state_dict(same.proj[0].state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(same([x, x]).agreement, torch.ones(3))


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


@pytest.mark.parametrize("present", [(0, 1, 2), (0, 2), (1,)])
def test_fusing_without_a_mask_gives_exactly_what_fusing_the_projections_gives(present):
    # The stage loop's path (no mask, no agreement) skips the keep flags; its values may
    # not differ from the general path's in any bit, or executors would disagree.
    torch.manual_seed(0)
    head = ExitHead([4, 6, 5], embed_dim=8, num_classes=3).eval()
    v = [torch.randn(7, d) if b in present else None for b, d in enumerate([4, 6, 5])]
    with torch.no_grad():
        quick = head(v, agreement=False)
        general = head.fuse(*head.project(v), agreement=False)
        masked = head(
            [x if x is not None else torch.zeros(7, d) for x, d in zip(v, [4, 6, 5])],
            torch.tensor([[b in present for b in range(3)]] * 7),
            agreement=False,
        )
    assert quick.agreement is None
    for other in (general, masked):
        assert torch.equal(quick.embedding, other.embedding) and torch.equal(quick.logits, other.logits)
