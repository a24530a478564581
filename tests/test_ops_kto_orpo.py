"""KTO and ORPO losses: parity with TRL 1.16 ``KTOTrainer`` and ``ORPOTrainer`` on random inputs, values by hand."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from posttrain.ops import dpo_loss, kto_loss, kto_reference_point, rpo_term
from tests.test_ops_preference import random_pairs

CPU = torch.device("cpu")


def trl_kto(per_token, lengths, ref, labels, mismatched, ref_mismatched, beta, desirable_weight,
            undesirable_weight):
    """TRL's ``KTOTrainer._compute_loss`` (one process, reference log-probs precomputed, ``loss_type="kto"``) on
    rows of per-token completion log-probs: (loss, gradient w.r.t. the per-token log-probs, the KL it used)."""
    from trl.trainer.kto_trainer import KTOTrainer

    trainer = object.__new__(KTOTrainer)
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SimpleNamespace(device=CPU, gather_for_metrics=lambda tensor: tensor)
    trainer.aux_loss_enabled = False
    trainer.precompute_ref_logps = True
    trainer.calculate_KL = True
    trainer.loss_type = "kto"
    trainer.beta = beta
    trainer.desirable_weight = desirable_weight
    trainer.undesirable_weight = undesirable_weight
    trainer._metrics = defaultdict(lambda: defaultdict(list))
    trainer._total_train_tokens = 0
    trainer._tp_size = 1
    trainer._compute_kl_logps = lambda model, batch: mismatched  # the policy's log-probs of the mismatched pairs
    rows, width = per_token.shape
    completion_mask = torch.zeros(rows, width + 1, dtype=torch.long)  # position 0 is the prompt
    completion_mask[:, 1:] = (torch.arange(width) < lengths[:, None]).long()
    log_probs = per_token.clone().requires_grad_()
    model = lambda **kwargs: SimpleNamespace(  # noqa: E731
        log_probs=log_probs, entropy=torch.zeros_like(per_token), mean_logits=torch.zeros_like(per_token))
    inputs = {"input_ids": torch.zeros(rows, width + 1, dtype=torch.long),
              "attention_mask": torch.ones(rows, width + 1, dtype=torch.long), "completion_mask": completion_mask,
              "label": labels, "ref_logps": ref, "ref_KL_logps": ref_mismatched}
    loss = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    return loss.detach(), log_probs.grad, trainer._metrics["train"]["kl"][0]


@pytest.mark.parametrize(("beta", "desirable_weight", "undesirable_weight", "shift"), [
    (0.1, 1.0, 1.0, 0.0), (0.5, 1.0, 1.33, 0.0), (2.0, 0.7, 1.0, 0.0),
    (0.3, 1.0, 1.0, -3.0),  # a negative KL estimate: the reference point is clamped to 0
])
def test_kto_matches_trl_kto_trainer(beta, desirable_weight, undesirable_weight, shift):
    per_token, lengths, ref = random_pairs(seed=11, pairs=6)
    generator = torch.Generator().manual_seed(3)
    labels = torch.rand(len(ref), generator=generator) < 0.5
    labels[:2] = torch.tensor([True, False])  # both labels present
    mismatched = per_token.sum(1).roll(1) + torch.randn(len(ref), generator=generator, dtype=torch.float64)
    ref_mismatched = mismatched - torch.randn(len(ref), generator=generator, dtype=torch.float64).abs() - shift
    trl_loss, trl_grad, trl_kl = trl_kto(per_token, lengths, ref, labels, mismatched, ref_mismatched, beta,
                                         desirable_weight, undesirable_weight)

    logps = per_token.sum(1).requires_grad_()
    z0 = kto_reference_point(mismatched, ref_mismatched)
    assert float(z0) == pytest.approx(trl_kl, abs=1e-12)
    assert (float(z0) == 0.0) == (shift < 0)
    result = kto_loss(logps, ref, labels, z0, beta, desirable_weight, undesirable_weight)
    torch.testing.assert_close(result.losses.mean(), trl_loss)
    result.losses.mean().backward()
    # TRL sums every position (the fused head gives 0 past a completion): each token's gradient is the sum's
    torch.testing.assert_close(trl_grad, logps.grad[:, None].expand_as(per_token))
    torch.testing.assert_close(result.rewards, beta * (logps.detach() - ref))


def test_kto_by_hand():
    logps, ref = torch.tensor([-2.0, -3.0]), torch.tensor([-2.5, -2.0])
    result = kto_loss(logps, ref, torch.tensor([True, False]), 0.2, beta=0.5, desirable_weight=2.0,
                      undesirable_weight=0.5)
    sigmoid = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = [2.0 * (1 - sigmoid(0.5 * (0.5 - 0.2))), 0.5 * (1 - sigmoid(0.5 * (0.2 - (-1.0))))]
    assert result.losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert float(kto_reference_point(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.7]))) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="weights must be > 0"):
        kto_loss(logps, ref, torch.tensor([True, False]), 0.0, undesirable_weight=0.0)
    with pytest.raises(ValueError, match="at least one mismatched"):
        kto_reference_point(torch.zeros(0), torch.zeros(0))


def trl_orpo(chosen_averages, rejected_averages, beta):
    """TRL's ``ORPOTrainer.odds_ratio_loss``: (β·log σ(log odds ratio) per pair, chosen rewards, rejected rewards)."""
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    trainer = object.__new__(ORPOTrainer)
    trainer.beta = beta
    trainer.accelerator = SimpleNamespace(device=CPU)
    losses, chosen_rewards, rejected_rewards, _, _ = trainer.odds_ratio_loss(chosen_averages, rejected_averages)
    return losses, chosen_rewards, rejected_rewards


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_orpo_matches_trl_orpo_trainer(beta):
    per_token, lengths, _ = random_pairs(seed=5, pairs=7)
    per_token[0], per_token[0, 0], lengths[0] = 0.0, -1e-3, 1  # near-certain: log(1 − p) on its branch near 0
    per_token = per_token.float()  # TRL computes the odds ratio in float32
    chosen_sums, rejected_sums = (part.clone().requires_grad_() for part in per_token.sum(1).chunk(2))
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    result = dpo_loss(chosen_sums, rejected_sums, beta=beta, kind="orpo", chosen_lengths=chosen_lengths,
                      rejected_lengths=rejected_lengths)
    averages = [part.detach().clone().requires_grad_() for part in (chosen_sums / chosen_lengths,
                                                                      rejected_sums / rejected_lengths)]
    trl_losses, trl_chosen_rewards, trl_rejected_rewards = trl_orpo(*averages, beta)
    torch.testing.assert_close(result.losses, -trl_losses)
    torch.testing.assert_close(result.chosen_rewards, trl_chosen_rewards)
    torch.testing.assert_close(result.rejected_rewards, trl_rejected_rewards)

    # the full objective, TRL's `policy_nll_loss − losses.mean()` with the NLL over the chosen completion tokens
    nll = -(per_token[: len(chosen_lengths)].sum()) / chosen_lengths.sum()
    ours = result.losses.mean() + rpo_term(chosen_sums, chosen_lengths)
    torch.testing.assert_close(ours, nll - trl_losses.mean())
    ours.backward()
    (nll - trl_losses.mean()).backward()
    torch.testing.assert_close(chosen_sums.grad, averages[0].grad / chosen_lengths - 1 / chosen_lengths.sum())
    torch.testing.assert_close(rejected_sums.grad, averages[1].grad / rejected_lengths)


def test_orpo_by_hand():
    # average log-probs log 0.8 and log 0.4: odds 4 and 2/3, log odds ratio log 6
    chosen, rejected = torch.tensor([2 * math.log(0.8)]), torch.tensor([3 * math.log(0.4)])
    result = dpo_loss(chosen, rejected, beta=0.25, kind="orpo", chosen_lengths=torch.tensor([2]),
                      rejected_lengths=torch.tensor([3]))
    assert float(result.losses) == pytest.approx(-0.25 * float(F.logsigmoid(torch.tensor(math.log(6.0)))))
    with pytest.raises(ValueError, match="reference-free"):
        dpo_loss(chosen, rejected, chosen, rejected, kind="orpo", chosen_lengths=torch.tensor([2]),
                 rejected_lengths=torch.tensor([3]))
