"""PPO's tensor math by hand: per-token rewards, GAE, whitening and the clipped value loss.

TRL 1.16 ships no PPO trainer and no GAE or value-loss function (its ``PPOTrainer`` was removed before 1.0), so
there is no TRL parity test; GAE is checked against its two closed forms, numbers worked out by hand, and the
textbook recursion on each row's response tokens alone.
"""

import pytest
import torch

from posttrain.ops import gae_advantages, token_rewards, value_loss_sum


def textbook_gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """The recursion of Schulman et al. 2016 (eq. 16) over one episode, in plain Python."""
    advantages, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        advantages[t] = running
    return advantages


def random_rows(seed: int = 0, rows: int = 5, width: int = 9):
    """Right-padded rows of per-token tensors whose response is one block after a prompt of random length."""
    generator = torch.Generator().manual_seed(seed)
    rewards, values = torch.randn(rows, width, generator=generator), torch.randn(rows, width, generator=generator)
    mask = torch.zeros(rows, width)
    for row in range(rows):
        start = int(torch.randint(0, 4, (), generator=generator))
        length = int(torch.randint(1, width - start + 1, (), generator=generator))
        mask[row, start : start + length] = 1
    mask[-1] = 0  # a row without response tokens
    return rewards * mask, values, mask


def test_gamma_and_lambda_one_give_returns_minus_values():
    rewards, values, mask = random_rows()
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1) * mask  # Σ_{k ≥ t} r_k (rewards are 0 outside the block)
    torch.testing.assert_close(returns, reward_to_go)
    torch.testing.assert_close(advantages, (reward_to_go - values) * mask)


def test_lambda_zero_gives_one_step_td_errors():
    rewards, values, mask = random_rows(seed=1)
    gamma = 0.9
    advantages, returns = gae_advantages(rewards, values, mask, gamma=gamma, lam=0.0)
    next_on = torch.nn.functional.pad(mask[:, 1:], (0, 1))  # the next token is a response token
    next_values = torch.nn.functional.pad(values[:, 1:], (0, 1)) * next_on
    torch.testing.assert_close(advantages, (rewards + gamma * next_values - values) * mask)
    torch.testing.assert_close(returns, (rewards + gamma * next_values) * mask)


def test_three_tokens_by_hand():
    # one prompt position, three response tokens, one pad: r = (0, 0, 1), V = (0.5, 0.2, 0.4), γ = 0.9, λ = 0.8
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[7.0, 0.5, 0.2, 0.4, 9.0]])  # the prompt's and the pad's values must not count
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    delta3 = 1.0 - 0.4  # the last token: no value after it
    delta2 = 0.0 + 0.9 * 0.4 - 0.2
    delta1 = 0.0 + 0.9 * 0.2 - 0.5
    a3 = delta3
    a2 = delta2 + 0.72 * a3
    a1 = delta1 + 0.72 * a2
    torch.testing.assert_close(advantages, torch.tensor([[0.0, a1, a2, a3, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, a1 + 0.5, a2 + 0.2, a3 + 0.4, 0.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.3)])
def test_rows_with_prompts_and_padding_equal_the_recursion_on_their_responses(gamma, lam):
    rewards, values, mask = random_rows(seed=2, rows=6, width=12)
    advantages, returns = gae_advantages(rewards, values, mask, gamma=gamma, lam=lam)
    assert torch.equal(advantages[mask == 0], torch.zeros(int((mask == 0).sum())))
    for row in range(len(mask)):
        on = mask[row].bool()
        expected = textbook_gae(rewards[row][on].tolist(), values[row][on].tolist(), gamma, lam)
        torch.testing.assert_close(advantages[row][on], torch.tensor(expected))
        torch.testing.assert_close(returns[row][on], torch.tensor(expected) + values[row][on])


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_on_every_token():
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    kl = torch.tensor([[5.0, 0.1, 0.2, 5.0], [0.3, -0.1, 0.0, 0.2], [1.0, 1.0, 1.0, 1.0]])
    scores = torch.tensor([2.0, -1.0, 3.0])
    assert torch.equal(token_rewards(scores, mask), torch.tensor(
        [[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]))
    expected = torch.tensor([[0.0, -0.01, 2.0 - 0.02, 0.0], [-0.03, 0.01, 0.0, -1.0 - 0.02], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(token_rewards(scores, mask, kl, kl_coef=0.1), expected)


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, -1.0, 5.0]])
    values = torch.tensor([[0.5, 0.1, 0.3, 5.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    result = value_loss_sum(values, old, returns, mask, clip=0.2)
    # token 0: V = 0.5 clipped to 0.2: max((0.5 − 1)², (0.2 − 1)²) = 0.64, the clipped one (no gradient)
    # token 1: V = 0.1 inside the range: (0.1 − 1)² = 0.81
    # token 2: V = 0.3 clipped to 0.2: max((0.3 + 1)², (0.2 + 1)²) = 1.69, the unclipped one
    assert float(result.loss) == pytest.approx(0.5 * (0.64 + 0.81 + 1.69))
    assert float(result.clipped) == 1.0
    result.loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.1 - 1.0, 0.3 + 1.0, 0.0]]))
    unclipped = value_loss_sum(values, old, returns, mask, clip=None)
    assert float(unclipped.loss) == pytest.approx(0.5 * (0.25 + 0.81 + 1.69)) and float(unclipped.clipped) == 0.0


def test_bad_arguments_are_value_errors():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="gamma and lam"):
        gae_advantages(torch.zeros(2, 3), torch.zeros(2, 3), mask, gamma=1.5)
    with pytest.raises(ValueError, match="one shape"):
        gae_advantages(torch.zeros(2, 3), torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="one per row"):
        token_rewards(torch.zeros(3), mask)
    with pytest.raises(ValueError, match="needs the per-token KL"):
        token_rewards(torch.zeros(2), mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="clip range"):
        value_loss_sum(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), mask, clip=0.0)
