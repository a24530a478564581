"""SFT losses (nll, ProFit, DFT) against hand computations."""

import math

import pytest
import torch

from posttrain.ops import profit_keep_mask, sft_loss


def test_nll_is_token_mean_over_response_tokens():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.2, 0.8, 0.6]]))
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.8) + math.log(0.6)) / 4
    assert sft_loss(logprobs, mask, "nll").item() == pytest.approx(expected, rel=1e-6)


def test_profit_drops_low_probability_tokens_but_keeps_them_in_the_denominator():
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.9], [0.3, 0.02, 0.7, 0.11]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    logprobs = probs.log()
    # tau = 0.1 keeps p > 0.1 strictly: 0.5, 0.9, 0.3, 0.7 (0.1 itself and the masked-out 0.11 are not kept)
    expected = -(math.log(0.5) + math.log(0.9) + math.log(0.3) + math.log(0.7)) / 7
    assert sft_loss(logprobs, mask, "profit", tau=0.1).item() == pytest.approx(expected, rel=1e-6)
    keep = profit_keep_mask(logprobs, mask, 0.1)
    assert keep.tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]


def test_profit_lower_is_the_complement_within_the_response():
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.9]])
    mask = torch.ones(1, 4)
    expected = -(math.log(0.05) + math.log(0.1)) / 4
    assert sft_loss(probs.log(), mask, "profit_lower", tau=0.1).item() == pytest.approx(expected, rel=1e-6)


def test_profit_gradient_flows_only_through_kept_tokens():
    logprobs = torch.tensor([[math.log(0.05), math.log(0.5)]], requires_grad=True)
    sft_loss(logprobs, torch.ones(1, 2), "profit", tau=0.1).backward()
    assert logprobs.grad.tolist() == [[0.0, -0.5]]


def test_dft_weights_each_token_by_its_detached_probability():
    probs = torch.tensor([[0.5, 0.2]])
    logprobs = probs.log().requires_grad_()
    loss = sft_loss(logprobs, torch.ones(1, 2), "dft")
    assert loss.item() == pytest.approx(-(0.5 * math.log(0.5) + 0.2 * math.log(0.2)) / 2, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.25, -0.1]]))


def test_global_normalizer_and_empty_batch():
    logprobs = torch.log(torch.tensor([[0.5, 0.5]]))
    assert sft_loss(logprobs, torch.ones(1, 2), num_tokens=8).item() == pytest.approx(-2 * math.log(0.5) / 8)
    assert sft_loss(logprobs, torch.zeros(1, 2)).item() == 0.0


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown SFT loss kind"):
        sft_loss(torch.zeros(1, 1), torch.ones(1, 1), "mystery")
