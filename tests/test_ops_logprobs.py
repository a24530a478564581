"""Chunked log-probabilities and entropies equal the naive full-vocabulary computation and TRL's."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from posttrain.ops import completion_logprobs, hidden_logprobs, soft_cap, token_entropy, token_logprobs


def naive_logprobs(logits, labels, temperature=1.0):
    return torch.log_softmax(logits.double() / temperature, -1).gather(-1, labels[..., None]).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_token_logprobs_equals_naive(temperature, chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 4
    labels = torch.randint(0, 50, (3, 7), generator=g)
    got = token_logprobs(logits, labels, temperature, chunk_size=chunk)
    assert got.shape == labels.shape
    torch.testing.assert_close(got.double(), naive_logprobs(logits, labels, temperature), atol=1e-5, rtol=0)


def test_token_logprobs_matches_trl_selective_log_softmax():
    from trl.trainer.utils import selective_log_softmax

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, 128, generator=g) * 3
    labels = torch.randint(0, 128, (4, 9), generator=g)
    for temperature in (1.0, 0.6):
        torch.testing.assert_close(
            token_logprobs(logits, labels, temperature), selective_log_softmax(logits, labels, temperature),
            atol=1e-5, rtol=0,
        )


def test_token_entropy_equals_naive():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 40, generator=g) * 5
    for temperature in (1.0, 1.5):
        p = torch.softmax(logits.double() / temperature, -1)
        expected = -(p * p.log()).sum(-1)
        torch.testing.assert_close(token_entropy(logits, temperature, chunk_size=4).double(), expected, atol=1e-5, rtol=0)


def test_token_logprobs_rejects_nonpositive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), temperature=0.0)


def test_hidden_logprobs_values_and_gradients_match_full_projection():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(11, 8, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(30, 8, generator=g, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, 30, (11,), generator=g)

    logps, entropy = hidden_logprobs(hidden, weight, labels, temperature=1.3, chunk_size=4, with_entropy=True)
    (logps.sum() + 0.5 * entropy.sum()).backward()
    grads = hidden.grad.clone(), weight.grad.clone()

    hidden.grad = weight.grad = None
    logits = (hidden @ weight.t()) / 1.3
    ref_logps = torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    p = torch.softmax(logits, -1)
    ref_entropy = -(p * torch.log_softmax(logits, -1)).sum(-1)
    (ref_logps.sum() + 0.5 * ref_entropy.sum()).backward()

    torch.testing.assert_close(logps, ref_logps)
    torch.testing.assert_close(entropy, ref_entropy)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)


def test_hidden_logprobs_applies_softcap():
    hidden = torch.randn(5, 4, dtype=torch.float64)
    weight = torch.randn(9, 4, dtype=torch.float64) * 10
    labels = torch.arange(5)
    logps, _ = hidden_logprobs(hidden, weight, labels, logit_softcap=3.0)
    capped = torch.tanh((hidden @ weight.t()) / 3.0) * 3.0
    torch.testing.assert_close(logps, torch.log_softmax(capped, -1)[torch.arange(5), labels])


def test_soft_cap_bounds_logits_and_is_the_identity_without_a_cap():
    logits = torch.tensor([-100.0, -1.0, 0.0, 2.0, 100.0])
    torch.testing.assert_close(soft_cap(logits, 5.0), 5.0 * torch.tanh(logits / 5.0))
    assert soft_cap(logits, 5.0).abs().max() <= 5.0
    assert soft_cap(logits, None) is logits and soft_cap(logits, 0.0) is logits


def test_completion_logprobs_equals_shifted_model_logits():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).double()
    input_ids = torch.randint(0, 64, (2, 10))
    loss_mask = torch.zeros(2, 10, dtype=torch.long)
    loss_mask[0, 4:] = 1
    loss_mask[1, 6:9] = 1
    out = completion_logprobs(model, input_ids, loss_mask, attention_mask=torch.ones_like(input_ids), with_entropy=True)
    logits = model(input_ids).logits[:, :-1]
    expected = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = loss_mask[:, 1:].double()
    torch.testing.assert_close(out.mask, mask)
    torch.testing.assert_close(out.logprobs, expected * mask)
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(out.entropy, -(p * p.log()).sum(-1) * mask)
