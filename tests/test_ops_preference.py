"""Preference losses: parity with TRL 1.16 DPOTrainer / CPOTrainer / RewardTrainer, hand values, bad arguments."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from posttrain.ops.preference import bradley_terry_loss, dpo_loss, rpo_term


def random_pairs(seed: int, pairs: int = 5, width: int = 9):
    """Per-token log-probs of chosen rows then rejected rows ``[2B, width]``, zero past each completion
    (as TRL's fused LM head returns for ``-100`` labels), their lengths ``[2B]`` and reference sums ``[2B]``."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (2 * pairs,), generator=generator)
    completion = (torch.arange(width) < lengths[:, None]).double()
    per_token = -torch.rand(2 * pairs, width, generator=generator, dtype=torch.float64) * 2 * completion
    ref = per_token.sum(1) + torch.randn(2 * pairs, generator=generator, dtype=torch.float64) * 1.5
    return per_token, lengths, ref


def trl_dpo_stub(loss_types, loss_weights, beta, label_smoothing):
    """A ``DPOTrainer`` holding only the attributes ``_compute_loss`` reads (one process, reference log-probs
    precomputed, reverse-KL DPO, no length desensitization, no WPO weighting)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    trainer = object.__new__(DPOTrainer)
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda tensor: tensor, gather_for_metrics=lambda tensor: tensor
    )
    trainer.aux_loss_enabled = False
    trainer.precompute_ref_logps = True
    trainer.ld_alpha = None
    trainer.f_divergence_type = "reverse_kl"
    trainer.loss_types = loss_types
    trainer.loss_weights = loss_weights
    trainer.beta = beta
    trainer.label_smoothing = label_smoothing
    trainer.use_weighting = False
    trainer._metrics = defaultdict(lambda: defaultdict(list))
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    return trainer


def trl_dpo(loss_types, per_token, lengths, ref, beta=0.1, label_smoothing=0.0, loss_weights=None):
    """TRL's ``DPOTrainer._compute_loss`` on rows ``[chosen…, rejected…]``: (loss, gradient w.r.t. the
    per-token log-probs, mean chosen reward, mean rejected reward)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    trainer = trl_dpo_stub(loss_types, loss_weights or [1.0] * len(loss_types), beta, label_smoothing)
    rows, width = per_token.shape
    # position 0 is the prompt; TRL's shifted completion mask covers the `lengths` tokens after it
    completion_mask = torch.zeros(rows, width + 1, dtype=torch.long)
    completion_mask[:, 1:] = (torch.arange(width) < lengths[:, None]).long()
    log_probs = per_token.clone().requires_grad_()
    model = lambda **kwargs: SimpleNamespace(  # noqa: E731
        log_probs=log_probs,
        entropy=torch.zeros_like(per_token),
        mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool),
    )
    ref_chosen, ref_rejected = ref.chunk(2)
    inputs = {
        "input_ids": torch.zeros(rows, width + 1, dtype=torch.long),
        "attention_mask": torch.ones(rows, width + 1, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    metrics = trainer._metrics["train"]
    rewards = (metrics["rewards/chosen"][0], metrics["rewards/rejected"][0])
    return loss.detach(), log_probs.grad, rewards


def trl_cpo_loss(loss_type, chosen_logps, rejected_logps, beta, label_smoothing, simpo_gamma=0.5):
    """TRL's ``CPOTrainer.cpo_loss`` (reference-free; its inputs are what it is given, sums or averages)."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    trainer = object.__new__(CPOTrainer)
    trainer.alpha = 0.0
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"))
    trainer.loss_type = loss_type
    trainer.simpo_gamma = simpo_gamma
    trainer.beta = beta
    trainer.label_smoothing = label_smoothing
    return trainer.cpo_loss(chosen_logps, rejected_logps)


def ours(kind, per_token, lengths, ref, beta=0.1, label_smoothing=0.0, gamma=0.0):
    """Our loss on the same rows, with gradients on the summed policy log-probs."""
    chosen, rejected = (part.clone().requires_grad_() for part in per_token.sum(1).chunk(2))
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    ref_chosen, ref_rejected = (None, None) if kind == "simpo" else ref.chunk(2)
    result = dpo_loss(
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        beta=beta,
        kind=kind,
        label_smoothing=label_smoothing,
        gamma=gamma,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    result.losses.mean().backward()
    return result, chosen.grad, rejected.grad


@pytest.mark.parametrize(
    ("kind", "beta", "label_smoothing"),
    [
        ("sigmoid", 0.1, 0.0),
        ("sigmoid", 0.7, 0.0),
        ("robust", 0.1, 0.0),
        ("robust", 0.3, 0.1),
        ("robust", 0.5, 0.35),
        ("ipo", 0.1, 0.0),
        ("ipo", 0.8, 0.0),
        ("hinge", 0.1, 0.0),
        ("hinge", 0.6, 0.0),  # β·h crosses 1 on some rows: relu is active and inactive in one batch
    ],
)
def test_dpo_kinds_match_trl_dpo_trainer(kind, beta, label_smoothing):
    per_token, lengths, ref = random_pairs(seed=3)
    pairs = per_token.shape[0] // 2
    result, chosen_grad, rejected_grad = ours(kind, per_token, lengths, ref, beta, label_smoothing)
    trl_loss, trl_grad, _ = trl_dpo([kind], per_token, lengths, ref, beta, label_smoothing)
    torch.testing.assert_close(result.losses.mean(), trl_loss)
    # TRL sums the per-token log-probs, so d loss / d token equals d loss / d sum on every completion token
    completion = torch.arange(per_token.shape[1]) < lengths[:, None]
    expected_grad = torch.cat([chosen_grad, rejected_grad])[:, None].expand_as(per_token) * completion
    torch.testing.assert_close(trl_grad * completion, expected_grad)
    assert expected_grad.abs().sum() > 0

    # unreduced losses and rewards, one pair at a time (TRL returns only the batch mean)
    for row in range(pairs):
        rows = [row, pairs + row]
        one_loss, _, (chosen_reward, rejected_reward) = trl_dpo(
            [kind], per_token[rows], lengths[rows], ref[rows], beta, label_smoothing
        )
        torch.testing.assert_close(result.losses[row], one_loss)
        assert result.chosen_rewards[row].item() == pytest.approx(chosen_reward)
        assert result.rejected_rewards[row].item() == pytest.approx(rejected_reward)
    if kind == "hinge" and beta == 0.6:
        assert (result.losses == 0).any() and (result.losses > 0).any()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.4])
def test_conservative_sigmoid_matches_trl_smoothed_logistic(label_smoothing):
    """TRL 1.16's DPOTrainer has no ε for ``sigmoid``; its CPOTrainer ``sigmoid`` loss is the cDPO formula on
    ``π_c − π_r``, so feeding it the log-ratios ``π − ref`` gives cDPO with a reference."""
    per_token, lengths, ref = random_pairs(seed=4)
    result, _, _ = ours("sigmoid", per_token, lengths, ref, beta=0.4, label_smoothing=label_smoothing)
    chosen_ratio, rejected_ratio = (per_token.sum(1) - ref).chunk(2)
    losses, chosen_rewards, rejected_rewards = trl_cpo_loss(
        "sigmoid", chosen_ratio, rejected_ratio, 0.4, label_smoothing
    )
    torch.testing.assert_close(result.losses, losses)
    torch.testing.assert_close(result.chosen_rewards, chosen_rewards)
    torch.testing.assert_close(result.rejected_rewards, rejected_rewards)


@pytest.mark.parametrize(
    ("beta", "gamma", "label_smoothing"), [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (2.0, 0.5, 0.15)]
)
def test_simpo_matches_trl_cpo_trainer(beta, gamma, label_smoothing):
    per_token, lengths, ref = random_pairs(seed=5)
    result, chosen_grad, _ = ours("simpo", per_token, lengths, ref, beta, label_smoothing, gamma)
    # CPOTrainer feeds SimPO length-averaged log-probs (get_batch_logps with average_log_prob=True)
    averages = (per_token.sum(1) / lengths).chunk(2)
    losses, chosen_rewards, rejected_rewards = trl_cpo_loss("simpo", *averages, beta, label_smoothing, gamma)
    torch.testing.assert_close(result.losses, losses)
    torch.testing.assert_close(result.chosen_rewards, chosen_rewards)
    torch.testing.assert_close(result.rejected_rewards, rejected_rewards)
    assert (chosen_grad < 0).all()  # a likelier chosen completion always lowers the SimPO loss


def test_rpo_term_matches_trl_sft_loss_and_combines_with_sigmoid():
    per_token, lengths, ref = random_pairs(seed=6)
    chosen_sums = per_token.sum(1).chunk(2)[0]
    chosen_lengths = lengths.chunk(2)[0]
    trl_sft, _, _ = trl_dpo(["sft"], per_token, lengths, ref)
    torch.testing.assert_close(rpo_term(chosen_sums, chosen_lengths), trl_sft)
    # a batch token mean, not the mean of per-row means (they differ with unequal lengths)
    assert rpo_term(chosen_sums, chosen_lengths).item() != pytest.approx(
        -(chosen_sums / chosen_lengths).mean().item()
    )

    alpha = 0.7
    trl_rpo, _, _ = trl_dpo(["sigmoid", "sft"], per_token, lengths, ref, beta=0.2, loss_weights=[1.0, alpha])
    result, _, _ = ours("sigmoid", per_token, lengths, ref, beta=0.2)
    torch.testing.assert_close(result.losses.mean() + alpha * rpo_term(chosen_sums, chosen_lengths), trl_rpo)


def test_values_by_hand():
    zero = torch.zeros(1)
    # h = 0, log σ(0) = −log 2: sigmoid gives ((1−ε) + ε)·log 2, robust ((1−ε) − ε)·log 2 / (1 − 2ε); both log 2
    for kind, label_smoothing in (("sigmoid", 0.0), ("sigmoid", 0.2), ("robust", 0.2)):
        result = dpo_loss(zero, zero, zero, zero, kind=kind, label_smoothing=label_smoothing)
        assert result.losses.item() == pytest.approx(math.log(2))
    # π_c − ref_c = 2, π_r − ref_r = −1: h = 3, β = 0.5 → β·h = 1.5
    chosen, rejected, ref_chosen, ref_rejected = (torch.tensor([value]) for value in (-3.0, -6.0, -5.0, -5.0))
    sigmoid = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5, label_smoothing=0.1)
    expected = -0.9 * math.log(1 / (1 + math.exp(-1.5))) - 0.1 * math.log(1 / (1 + math.exp(1.5)))
    assert sigmoid.losses.item() == pytest.approx(expected)
    assert sigmoid.chosen_rewards.item() == pytest.approx(1.0)
    assert sigmoid.rejected_rewards.item() == pytest.approx(-0.5)
    robust = dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, beta=0.5, kind="robust", label_smoothing=0.1
    )
    expected = (-0.9 * math.log(1 / (1 + math.exp(-1.5))) + 0.1 * math.log(1 / (1 + math.exp(1.5)))) / 0.8
    assert robust.losses.item() == pytest.approx(expected)
    hinge = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5, kind="hinge")
    assert hinge.losses.item() == 0.0  # margin 1.5 > 1
    # IPO with lengths 2 and 4: h̄ = 2/2 − (−1)/4 = 1.25, target 1/(2β) = 1
    lengths = (torch.tensor([2]), torch.tensor([4]))
    ipo = dpo_loss(
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        beta=0.5,
        kind="ipo",
        chosen_lengths=lengths[0],
        rejected_lengths=lengths[1],
    )
    assert ipo.losses.item() == pytest.approx(0.25**2)
    assert ipo.chosen_rewards.item() == pytest.approx(1.0)  # IPO rewards are not length-normalized
    # SimPO: β(−3/2 − (−6/4)) − γ = −γ
    simpo = dpo_loss(
        chosen,
        rejected,
        beta=2.0,
        kind="simpo",
        gamma=0.5,
        chosen_lengths=lengths[0],
        rejected_lengths=lengths[1],
    )
    assert simpo.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(0.5))))
    assert simpo.chosen_rewards.item() == pytest.approx(-3.0)
    assert simpo.rejected_rewards.item() == pytest.approx(-3.0)
    assert rpo_term(torch.tensor([-3.0, -6.0]), torch.tensor([2, 4])).item() == pytest.approx(1.5)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 10.0])
def test_sigmoid_gradient_raises_chosen_and_lowers_rejected(beta):
    per_token, lengths, ref = random_pairs(seed=7, pairs=8)
    result, chosen_grad, rejected_grad = ours("sigmoid", per_token, lengths, ref, beta=beta)
    assert (chosen_grad < 0).all() and (rejected_grad > 0).all()
    # d loss_i / d π_c,i = −β·σ(−β·h_i) / B for the mean loss
    chosen_ratio, rejected_ratio = (per_token.sum(1) - ref).chunk(2)
    expected = -beta * torch.sigmoid(-beta * (chosen_ratio - rejected_ratio)) / chosen_ratio.numel()
    torch.testing.assert_close(chosen_grad, expected)
    torch.testing.assert_close(rejected_grad, -expected)
    # a step along −gradient on the chosen log-probs lowers every pair's loss
    chosen, rejected = per_token.sum(1).chunk(2)
    ref_chosen, ref_rejected = ref.chunk(2)
    raised = dpo_loss(chosen + 0.5, rejected, ref_chosen, ref_rejected, beta=beta).losses
    assert (raised < result.losses).all()


def test_reference_log_probs_get_no_gradient():
    chosen, rejected = torch.tensor([-1.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    ref_chosen, ref_rejected = (
        torch.tensor([-1.5], requires_grad=True),
        torch.tensor([-1.5], requires_grad=True),
    )
    result = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, kind="robust", label_smoothing=0.1)
    result.losses.sum().backward()
    assert ref_chosen.grad is None and ref_rejected.grad is None
    assert chosen.grad is not None and not result.chosen_rewards.requires_grad


def trl_reward_loss(chosen, rejected, margin, center):
    """TRL's ``RewardTrainer.compute_loss`` with a stub model whose scalar head returns the given rewards."""
    from trl.trainer.reward_trainer import RewardTrainer

    trainer = object.__new__(RewardTrainer)
    trainer.model = SimpleNamespace(training=True)
    trainer.args = SimpleNamespace(center_rewards_coefficient=center)
    trainer.accelerator = SimpleNamespace(
        gather=lambda tensor: tensor, gather_for_metrics=lambda tensor: tensor
    )
    trainer._metrics = defaultdict(lambda: defaultdict(list))
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    model = lambda **kwargs: SimpleNamespace(logits=torch.cat([chosen, rejected])[:, None])  # noqa: E731
    inputs = {"attention_mask": torch.ones(2 * chosen.numel(), 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    return RewardTrainer.compute_loss(trainer, model, inputs)


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01, 0.5])
def test_bradley_terry_matches_trl_reward_trainer(with_margin, center):
    generator = torch.Generator().manual_seed(8)
    chosen, rejected, margin = (
        torch.randn(6, generator=generator, dtype=torch.float64) * 2 for _ in range(3)
    )
    margin = margin.abs() if with_margin else None
    expected = trl_reward_loss(chosen, rejected, margin, center)
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margin, center), expected)


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([1.0, 3.0]), torch.tensor([0.0, -1.0])
    plain = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-4.0))) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(plain)
    # a margin of 1 asks for a larger gap: the first pair now sits at 0 → log 2
    with_margin = (math.log(2) + math.log1p(math.exp(-3.0))) / 2
    assert bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 1.0])).item() == pytest.approx(
        with_margin
    )
    centered = bradley_terry_loss(chosen, rejected, center_coefficient=0.1).item()
    assert centered == pytest.approx(plain + 0.1 * (1.0**2 + 2.0**2) / 2)


def test_dpo_loss_rejects_bad_arguments():
    one = torch.zeros(2)
    lengths = torch.ones(2, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown preference loss kind 'kto'"):
        dpo_loss(one, one, one, one, kind="kto")
    for beta in (0.0, -0.1):
        with pytest.raises(ValueError, match="beta must be > 0"):
            dpo_loss(one, one, one, one, beta=beta)
    for label_smoothing in (-0.1, 0.5, 0.7):
        with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 0.5\)"):
            dpo_loss(one, one, one, one, kind="robust", label_smoothing=label_smoothing)
    with pytest.raises(ValueError, match="the 'hinge' loss has no label smoothing"):
        dpo_loss(one, one, one, one, kind="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        dpo_loss(one, one, kind="sigmoid")
    with pytest.raises(ValueError, match="needs reference log-probs"):
        dpo_loss(one, one, one, None, kind="robust")
    with pytest.raises(ValueError, match="reference-free but reference log-probs were given"):
        dpo_loss(one, one, one, one, kind="simpo", chosen_lengths=lengths, rejected_lengths=lengths)
    with pytest.raises(ValueError, match="'simpo' loss averages log-probs over completion tokens"):
        dpo_loss(one, one, kind="simpo")
    with pytest.raises(ValueError, match="'ipo' loss averages log-probs"):
        dpo_loss(one, one, one, one, kind="ipo", chosen_lengths=lengths)
    with pytest.raises(ValueError, match="gamma"):
        dpo_loss(one, one, one, one, kind="sigmoid", gamma=0.5)
    with pytest.raises(ValueError, match="center_coefficient must be >= 0"):
        bradley_terry_loss(one, one, center_coefficient=-0.01)
