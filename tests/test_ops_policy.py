"""GRPO-family advantages and policy losses: hand computations and parity with TRL 1.16 GRPOTrainer."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from posttrain.errors import DataError
from posttrain.ops import behaviour_correction, group_advantages, policy_loss


def trl_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str) -> torch.Tensor:
    """TRL 1.16 ``GRPOTrainer._generate_and_score_completions`` (grpo_trainer.py, "sum_then_normalize"
    branch), transcribed: the code sits inside the generation method and cannot be called on its own.
    ``nanstd`` is TRL's own function."""
    from trl.trainer.utils import nanstd

    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    else:
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return advantages


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("binary", [True, False])
def test_group_advantages_match_trl(scale, binary):
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(24, generator=generator, dtype=torch.float64)
    if binary:
        rewards = (rewards > 0.5).double()
        rewards[:4] = 1.0  # one group with zero spread
    torch.testing.assert_close(group_advantages(rewards, 4, scale), trl_advantages(rewards, 4, scale))


def test_group_advantages_by_hand_with_unbiased_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.25, unbiased std sqrt((0.75² + 3·0.25²)/3) = 0.5; group 2: no spread, advantage 0
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 0.0, 0.0]) / torch.tensor(
        [0.5001] * 4 + [1e-4] * 4
    )
    torch.testing.assert_close(group_advantages(rewards, 4), expected)
    torch.testing.assert_close(
        group_advantages(rewards, 4, scale="none"), torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    )
    batch_std = rewards.std().item()  # all 8 rewards, ÷ 7
    torch.testing.assert_close(
        group_advantages(rewards, 4, scale="batch"),
        torch.tensor([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]) / (batch_std + 1e-4),
    )


def test_rloo_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 3.0, 1.0])
    # group 1: others' means 0, 1/3, 1/3, 1/3; group 2 (G = 2): the other sample itself
    expected = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3, 2.0, -2.0])
    torch.testing.assert_close(group_advantages(rewards[:4], 4, "none", "rloo"), expected[:4])
    torch.testing.assert_close(group_advantages(rewards[4:], 2, "none", "rloo"), expected[4:])
    scaled = group_advantages(rewards[:4], 4, "group", "rloo")
    torch.testing.assert_close(scaled, expected[:4] / 0.5001)


def test_group_advantages_reject_bad_configurations():
    with pytest.raises(ValueError, match="group-std scaling needs at least 2 samples per prompt, got G = 1"):
        group_advantages(torch.ones(4), 1, "group")
    with pytest.raises(ValueError, match="the RLOO baseline needs at least 2"):
        group_advantages(torch.ones(4), 1, "none", "rloo")
    with pytest.raises(ValueError, match="5 rewards do not split into groups of 2"):
        group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="unknown advantage scale 'z'"):
        group_advantages(torch.ones(4), 2, "z")
    with pytest.raises(DataError, match="NaN or infinite"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)
    # G = 1 is fine without group statistics
    torch.testing.assert_close(
        group_advantages(torch.tensor([1.0, 3.0]), 1, "none"), torch.tensor([0.0, 0.0])
    )


def trl_stub(kind: str, logprobs: torch.Tensor, beta: float, eps_low: float, eps_high: float, max_len: int):
    """The attributes ``GRPOTrainer._compute_loss`` reads, on one process without accumulation."""
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (
            logprobs,
            torch.zeros_like(logprobs),
            None,
        ),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=kind,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=max_len,
        accelerator=SimpleNamespace(
            num_processes=1, reduce=lambda tensor, reduction: tensor, gather=lambda tensor: tensor
        ),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
    )


def random_batch(seed: int, rows: int = 6, length: int = 7):
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, length, generator=generator, dtype=torch.float64) * 3
    logprobs = old + torch.randn(rows, length, generator=generator, dtype=torch.float64) * 0.3  # many clipped
    ref = old + torch.randn(rows, length, generator=generator, dtype=torch.float64) * 0.2
    advantages = torch.randn(rows, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, length + 1, (rows,), generator=generator)
    mask = (torch.arange(length) < lengths[:, None]).long()
    return logprobs, old, ref, advantages, mask


@pytest.mark.parametrize("kind", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize(("beta", "eps_high"), [(0.0, 0.2), (0.04, 0.28)])
def test_policy_loss_matches_trl_compute_loss(kind, beta, eps_high):
    from trl.trainer.grpo_trainer import GRPOTrainer

    logprobs, old, ref, advantages, mask = random_batch(seed=1)
    max_len = mask.shape[1] + 3  # TRL's dr_grpo divides by the configured maximum, not the padded width
    generation_tokens = mask.sum() + 11  # dapo: this micro-batch is part of a larger generation batch
    trl_logprobs = logprobs.clone().requires_grad_()
    stub = trl_stub(kind, trl_logprobs, beta, 0.2, eps_high, max_len)
    inputs = {
        "prompt_ids": torch.zeros(mask.shape[0], 1, dtype=torch.long),
        "prompt_mask": torch.ones(mask.shape[0], 1, dtype=torch.long),
        "completion_ids": torch.zeros_like(mask),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": generation_tokens,
    }
    expected = GRPOTrainer._compute_loss(stub, None, inputs)
    expected.backward()

    ours_logprobs = logprobs.clone().requires_grad_()
    result = policy_loss(
        ours_logprobs,
        old,
        advantages,
        mask,
        kind=kind,
        eps_low=0.2,
        eps_high=eps_high,
        ref_logprobs=ref if beta > 0 else None,
        beta=beta,
        num_active_tokens=generation_tokens,
        max_completion_length=max_len,
    )
    result.loss.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(ours_logprobs.grad, trl_logprobs.grad)

    metrics = stub._metrics["train"]
    assert result.clip_low.item() == pytest.approx(metrics["clip_ratio/low_mean"][0])
    assert result.clip_high.item() == pytest.approx(metrics["clip_ratio/high_mean"][0])
    assert result.clip_region.item() == pytest.approx(metrics["clip_ratio/region_mean"][0])
    assert result.clip_region.item() > 0  # the random batch does exercise clipping
    if beta > 0:
        assert result.kl.item() == pytest.approx(metrics["kl"][0])
    else:
        assert result.kl is None


def test_clipping_by_hand():
    # token 1: ratio 1.5, A = +1 → clipped at 1 + ε_high = 1.28, no gradient
    # token 2: ratio 0.5, A = −1 → −min(−0.5, −0.8) = 0.8 (clipped at 1 − ε_low), no gradient
    # token 3: ratio 1.1, A = +1 → −1.1, inside the trust region, gradient −ratio = −1.1
    old = torch.zeros(3, 1)
    logprobs = torch.log(torch.tensor([[1.5], [0.5], [1.1]])).requires_grad_()
    advantages = torch.tensor([1.0, -1.0, 1.0])
    result = policy_loss(logprobs, old, advantages, torch.ones(3, 1), kind="bnpo", eps_low=0.2, eps_high=0.28)
    assert result.loss.item() == pytest.approx((-1.28 + 0.8 - 1.1) / 3)
    result.loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0], [0.0], [-1.1 / 3]]))
    assert result.clip_high.item() == pytest.approx(1 / 3)
    assert result.clip_low.item() == pytest.approx(1 / 3)
    assert result.clip_region.item() == pytest.approx(2 / 3)
    assert result.ratio.item() == pytest.approx((1.5 + 0.5 + 1.1) / 3)


def test_kinds_aggregate_tokens_differently_by_hand():
    # on-policy (ratio 1) with A = 1: every response token contributes −1
    logprobs = torch.zeros(2, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]])
    advantages = torch.ones(2)
    loss = {
        kind: policy_loss(logprobs, logprobs, advantages, mask, kind=kind).loss.item()
        for kind in ("grpo", "bnpo", "dr_grpo", "dapo")
    }
    assert loss["grpo"] == pytest.approx(-1.0)  # mean of the row means (−1, −1)
    assert loss["bnpo"] == pytest.approx(-1.0)  # −5 / 5
    assert loss["dr_grpo"] == pytest.approx(-5 / 8)  # −5 / (2 rows × 4)
    assert loss["dapo"] == pytest.approx(-1.0)  # −5 / Σ mask
    dapo = policy_loss(logprobs, logprobs, advantages, mask, kind="dapo", num_active_tokens=20).loss
    assert dapo.item() == pytest.approx(-5 / 20)


def test_dapo_micro_batches_sum_to_the_generation_batch_token_mean():
    logprobs, old, _, advantages, mask = random_batch(seed=2)
    whole = policy_loss(logprobs, old, advantages, mask, kind="bnpo").loss
    tokens = mask.sum()
    halves = sum(
        policy_loss(logprobs[rows], old[rows], advantages[rows], mask[rows], num_active_tokens=tokens).loss
        for rows in (slice(0, 3), slice(3, 6))
    )
    torch.testing.assert_close(halves, whole)


def test_kl_by_hand_and_gradients_flow_only_through_logprobs():
    logprobs = torch.tensor([[math.log(0.5)]], requires_grad=True)
    old = torch.tensor([[math.log(0.5)]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25)]], requires_grad=True)
    advantages = torch.tensor([2.0], requires_grad=True)
    result = policy_loss(logprobs, old, advantages, torch.ones(1, 1), kind="grpo", ref_logprobs=ref, beta=0.1)
    kl = 0.5 - math.log(0.5) - 1  # exp(r) − r − 1 with r = log(0.25/0.5)
    assert result.kl.item() == pytest.approx(kl)
    assert result.loss.item() == pytest.approx(-2.0 + 0.1 * kl)
    result.loss.backward()
    assert old.grad is None and ref.grad is None and advantages.grad is None
    # d/dlogp [−ρA + β(exp(ref − logp) − (ref − logp) − 1)] = −A + β(1 − exp(ref − logp))
    assert logprobs.grad.item() == pytest.approx(-2.0 + 0.1 * (1 - 0.5))


def test_kl_is_reported_without_entering_the_loss_when_beta_is_zero():
    logprobs = torch.zeros(1, 2)
    ref = torch.full((1, 2), math.log(0.5))
    result = policy_loss(logprobs, logprobs, torch.ones(1), torch.ones(1, 2), kind="bnpo", ref_logprobs=ref)
    assert result.loss.item() == pytest.approx(-1.0)
    assert result.kl.item() == pytest.approx(0.5 - math.log(0.5) - 1)


def test_policy_loss_rejects_bad_arguments():
    logprobs = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown policy loss kind 'ppo'"):
        policy_loss(logprobs, logprobs, torch.ones(2), torch.ones(2, 3), kind="ppo")
    with pytest.raises(ValueError, match="needs reference log-probs"):
        policy_loss(logprobs, logprobs, torch.ones(2), torch.ones(2, 3), beta=0.1)
    with pytest.raises(ValueError, match="advantages have shape"):
        policy_loss(logprobs, logprobs, torch.ones(3), torch.ones(2, 3))


@pytest.mark.parametrize("kind", ["grpo", "dapo"])
@pytest.mark.parametrize("weights_shape", ["token", "sequence"])
def test_behaviour_weights_match_trl_importance_sampling_ratio(kind, weights_shape):
    """TRL multiplies the clipped surrogate by ``importance_sampling_ratio`` before adding the KL term."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    logprobs, old, ref, advantages, mask = random_batch(seed=3)
    generator = torch.Generator().manual_seed(4)
    width = mask.shape[1] if weights_shape == "token" else 1
    weights = torch.rand(mask.shape[0], width, generator=generator, dtype=torch.float64) * 2
    trl_logprobs = logprobs.clone().requires_grad_()
    stub = trl_stub(kind, trl_logprobs, 0.04, 0.2, 0.28, mask.shape[1])
    stub.use_vllm, stub.vllm_importance_sampling_correction = True, True
    inputs = {"prompt_ids": torch.zeros(mask.shape[0], 1, dtype=torch.long),
              "prompt_mask": torch.ones(mask.shape[0], 1, dtype=torch.long),
              "completion_ids": torch.zeros_like(mask), "completion_mask": mask, "advantages": advantages,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum(),
              "importance_sampling_ratio": weights}
    expected = GRPOTrainer._compute_loss(stub, None, inputs)
    expected.backward()
    ours_logprobs = logprobs.clone().requires_grad_()
    result = policy_loss(ours_logprobs, old, advantages, mask, kind=kind, eps_high=0.28, ref_logprobs=ref, beta=0.04,
                         behaviour_weights=weights)
    result.loss.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(ours_logprobs.grad, trl_logprobs.grad)


def test_behaviour_correction_modes_by_hand():
    learner = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -9.0]])
    engine = torch.tensor([[-2.0, -1.5, -0.5], [-1.5, -0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    gap = torch.tensor([[1.0, -0.5, 0.0], [0.5, -0.5, 0.0]])  # masked token: no gap
    token = behaviour_correction(learner, engine, mask, "token_truncate", cap=2.0)
    torch.testing.assert_close(token.weights, gap.exp().clamp(max=2.0))
    assert token.max_ratio.item() == pytest.approx(math.e)
    assert token.mean_abs_gap.item() == pytest.approx(2.5 / 5)
    assert token.corrected.item() == pytest.approx(1 / 5)
    masked = behaviour_correction(learner, engine, mask, "token_mask", cap=2.0, floor=0.7)
    torch.testing.assert_close(masked.weights, torch.where((gap.exp() > 2.0) | (gap.exp() < 0.7), 0.0, gap.exp()))
    sequence = behaviour_correction(learner, engine, mask, "sequence_truncate", cap=1.5, floor=0.5)
    torch.testing.assert_close(sequence.weights, torch.tensor([[1.5], [1.0]]))
    dropped = behaviour_correction(learner, engine, mask, "sequence_mask", cap=1.5)
    torch.testing.assert_close(dropped.weights, torch.tensor([[0.0], [1.0]]))


def test_behaviour_correction_is_one_when_engine_and_learner_agree_and_rejects_bad_arguments():
    logprobs, _, _, _, mask = random_batch(seed=5)
    same = behaviour_correction(logprobs, logprobs.clone(), mask)
    assert torch.equal(same.weights, torch.ones_like(logprobs)) and same.mean_abs_gap.item() == 0.0
    with pytest.raises(ValueError, match="behaviour correction mode"):
        behaviour_correction(logprobs, logprobs, mask, mode="clip")
    with pytest.raises(ValueError, match="one shape"):
        behaviour_correction(logprobs, logprobs[:, :2], mask)


def test_kl_estimators_by_hand_and_in_expectation():
    from posttrain.ops import kl_estimate

    logprobs, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = math.log(0.5)  # log π_ref − log π_θ
    assert kl_estimate(logprobs, ref, "k1").item() == pytest.approx(-r)
    assert kl_estimate(logprobs, ref, "k2").item() == pytest.approx(0.5 * r * r)
    assert kl_estimate(logprobs, ref, "k3").item() == pytest.approx(math.exp(r) - r - 1)
    # tokens drawn from π_θ: k1 and k3 average to KL(π_θ ‖ π_ref); k2 is close when the two are close
    generator = torch.Generator().manual_seed(0)
    policy = torch.softmax(torch.randn(6, generator=generator), -1)
    reference = torch.softmax(torch.log(policy) + 0.3 * torch.randn(6, generator=generator), -1)
    exact = float((policy * (policy.log() - reference.log())).sum())
    tokens = torch.multinomial(policy, 200_000, replacement=True, generator=generator)
    estimates = {kind: float(kl_estimate(policy.log()[tokens], reference.log()[tokens], kind).mean())
                 for kind in ("k1", "k2", "k3")}
    assert estimates["k1"] == pytest.approx(exact, rel=0.1) and estimates["k3"] == pytest.approx(exact, rel=0.05)
    assert estimates["k2"] == pytest.approx(exact, rel=0.15)
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logprobs, ref, "k4")


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_the_chosen_kl_estimator_enters_the_loss(estimator):
    from posttrain.ops import kl_estimate

    generator = torch.Generator().manual_seed(1)
    logprobs = -torch.rand(2, 3, generator=generator) - 0.1
    ref = -torch.rand(2, 3, generator=generator) - 0.1
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    result = policy_loss(logprobs, logprobs, torch.zeros(2), mask, kind="bnpo", ref_logprobs=ref, beta=0.5,
                         kl_estimator=estimator)
    kl = (kl_estimate(logprobs, ref, estimator) * mask).sum() / mask.sum()
    assert result.kl.item() == pytest.approx(kl.item())
    assert result.loss.item() == pytest.approx(0.5 * kl.item())  # zero advantages: the loss is β·KL


@pytest.mark.parametrize("kind", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_entropy_bonus_matches_trl_compute_loss(kind):
    """TRL 1.16 subtracts ``entropy_coef`` × the token mean of the entropy, whatever the loss type."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    logprobs, old, _, advantages, mask = random_batch(seed=3)
    entropy = torch.rand(logprobs.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    trl_logprobs, trl_entropy = logprobs.clone().requires_grad_(), entropy.clone().requires_grad_()
    stub = trl_stub(kind, trl_logprobs, 0.0, 0.2, 0.28, mask.shape[1])
    stub._get_per_token_logps_and_entropies = lambda *args, **kwargs: (trl_logprobs, trl_entropy, None)
    stub._entropy_bonus_enabled, stub.entropy_coef, stub.use_adaptive_entropy = True, 0.3, False
    stub.accelerator.sync_gradients = True
    inputs = {"prompt_ids": torch.zeros(mask.shape[0], 1, dtype=torch.long),
              "prompt_mask": torch.ones(mask.shape[0], 1, dtype=torch.long), "completion_ids": torch.zeros_like(mask),
              "completion_mask": mask, "advantages": advantages, "old_per_token_logps": old,
              "num_items_in_batch": mask.sum()}
    expected = GRPOTrainer._compute_loss(stub, None, inputs)
    expected.backward()
    ours_logprobs, ours_entropy = logprobs.clone().requires_grad_(), entropy.clone().requires_grad_()
    result = policy_loss(ours_logprobs, old, advantages, mask, kind=kind, eps_high=0.28,
                         max_completion_length=mask.shape[1], entropy=ours_entropy, entropy_coef=0.3)
    result.loss.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(ours_logprobs.grad, trl_logprobs.grad)
    torch.testing.assert_close(ours_entropy.grad, trl_entropy.grad)
    with pytest.raises(ValueError, match="needs the per-token entropy"):
        policy_loss(logprobs, old, advantages, mask, entropy_coef=0.2)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gspo_matches_trl_sequence_level_importance_sampling(beta):
    """GSPO is TRL 1.16's ``importance_sampling_level="sequence"`` with ``loss_type="grpo"``."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    logprobs, old, ref, advantages, mask = random_batch(seed=5)
    logprobs = old + (logprobs - old) * 0.01  # sequence ratios near 1: some inside, some outside GSPO's ε
    trl_logprobs = logprobs.clone().requires_grad_()
    stub = trl_stub("grpo", trl_logprobs, beta, 3e-4, 4e-4, mask.shape[1])
    stub.importance_sampling_level = "sequence"
    inputs = {"prompt_ids": torch.zeros(mask.shape[0], 1, dtype=torch.long),
              "prompt_mask": torch.ones(mask.shape[0], 1, dtype=torch.long), "completion_ids": torch.zeros_like(mask),
              "completion_mask": mask, "advantages": advantages, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}
    expected = GRPOTrainer._compute_loss(stub, None, inputs)
    expected.backward()
    ours_logprobs = logprobs.clone().requires_grad_()
    result = policy_loss(ours_logprobs, old, advantages, mask, kind="gspo", eps_low=3e-4, eps_high=4e-4,
                         ref_logprobs=ref if beta > 0 else None, beta=beta)
    result.loss.backward()
    torch.testing.assert_close(result.loss, expected.detach())
    torch.testing.assert_close(ours_logprobs.grad, trl_logprobs.grad)
    assert 0 < result.clip_region.item() < 1  # the test exercises both sides of the sequence clip
