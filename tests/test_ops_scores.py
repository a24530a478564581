"""LaSeR's last-token score and self-certainty equal their formulas on hand-computed and random inputs."""

import math

import pytest
import torch

from posttrain.ops import laser_score, self_certainty, token_self_certainty


def naive_self_certainty(logits):
    """KL(U || p) = -(1/V) sum_j log p_j - log V, from a full log-softmax in float64."""
    logp = torch.log_softmax(logits.double(), -1)
    return -logp.mean(-1) - math.log(logits.shape[-1])


def test_laser_score_values():
    assert laser_score(-13.0) == pytest.approx(1.0)
    assert laser_score(-23.0) == pytest.approx(0.0)
    assert laser_score(-20.0, c_ref=-25.0, beta_v=0.2) == pytest.approx(1.0)
    scores = laser_score(torch.tensor([-23.0, -18.0, -33.0]))
    torch.testing.assert_close(scores, torch.tensor([0.0, 0.5, -1.0]))


def test_laser_score_rejects_nonpositive_beta():
    with pytest.raises(ValueError, match="beta_v"):
        laser_score(-13.0, beta_v=0.0)


def test_uniform_distribution_has_zero_self_certainty():
    logits = torch.full((2, 3, 17), 4.2)
    assert torch.allclose(self_certainty(logits, torch.ones(2, 3)), torch.zeros(2), atol=1e-6)


def test_two_token_hand_value():
    # p = (1/4, 3/4): KL(U || p) = -(log 1/4 + log 3/4)/2 - log 2 = log(4/3)/2.
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_self_certainty(logits).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)


def test_mean_runs_over_masked_positions_only_and_empty_rows_score_zero():
    uniform, peaked = torch.zeros(5), torch.tensor([10.0, 0, 0, 0, 0])
    logits = torch.stack([torch.stack([uniform, peaked, peaked]), torch.stack([peaked, peaked, peaked])])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    peaked_value = naive_self_certainty(peaked).item()
    torch.testing.assert_close(self_certainty(logits, mask), torch.tensor([peaked_value / 2, 0.0]))


@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_chunked_equals_full_log_softmax(chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 3
    mask = (torch.rand(3, 7, generator=g) > 0.3).long()
    expected = (naive_self_certainty(logits) * mask).sum(-1) / mask.sum(-1)
    got = self_certainty(logits, mask, chunk_size=chunk)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_half_precision_logits_are_scored_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 4, 64, generator=g) * 3).bfloat16()
    got = self_certainty(logits, torch.ones(2, 4))
    assert got.dtype == torch.float32
    expected = naive_self_certainty(logits.float()).mean(-1)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)
