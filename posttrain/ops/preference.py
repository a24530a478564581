"""Pairwise preference losses over sequence log-probs, matching TRL 1.16 ``DPOTrainer`` / ``CPOTrainer``.

Inputs are sequence log-probs ``π = Σ_t log π_θ(y_t)`` summed over the completion tokens, one per pair
(``[B]``); ``ref`` are the same sums under the frozen reference model, and ``|y|`` the completion lengths
in tokens. With ``h = (π_c − ref_c) − (π_r − ref_r)`` and label noise ``ε``:

* ``sigmoid`` — DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7) with conservative label smoothing
  (cDPO, Mitchell 2023): ``−(1−ε)·log σ(β·h) − ε·log σ(−β·h)``. TRL 1.16's ``DPOTrainer`` has no ε for
  ``sigmoid`` (ε = 0 matches it); the smoothed form is the one of its ``CPOTrainer`` ``sigmoid`` loss.
* ``robust``  — robust DPO (Chowdhury et al. 2024, arXiv 2403.00409), ε the label-flip rate:
  ``(−(1−ε)·log σ(β·h) + ε·log σ(−β·h)) / (1 − 2ε)``, an unbiased estimate of the clean-label loss.
* ``ipo``     — IPO (Azar et al. 2023, arXiv 2310.12036, Eq. 17) on length-averaged log-ratios, as TRL
  does (confirmed by the IPO authors, per TRL's comment): ``(h̄ − 1/(2β))²`` with
  ``h̄ = (π_c − ref_c)/|y_c| − (π_r − ref_r)/|y_r|``. Pass token *sums* and the lengths; the averaging
  happens here.
* ``hinge``   — SLiC-HF (Zhao et al. 2023, arXiv 2305.10425): ``relu(1 − β·h)``.
* ``simpo``   — SimPO (Meng et al. 2024, arXiv 2405.14734, Eq. 6), reference-free, with the same optional
  ε as ``sigmoid`` (TRL ``CPOTrainer``, ``loss_type="simpo"``):
  ``z = β·(π_c/|y_c| − π_r/|y_r|) − γ``, loss ``−(1−ε)·log σ(z) − ε·log σ(−z)``.
* ``orpo``    — ORPO's odds-ratio term (Hong et al. 2024, arXiv 2403.07691, Eqs. 4–7), reference-free, β its
  weight λ, as TRL 1.16 ``ORPOTrainer.odds_ratio_loss``: with the average log-probs ``a = π/|y|`` and
  ``log odds(y) = a − log(1 − exp(a))``, loss ``−β·log σ(log odds(y_c) − log odds(y_r))``. The full ORPO
  objective adds the NLL of the chosen completions (weight 1): the trainer adds :func:`rpo_term`.

**Per-pair label smoothing** (``sigmoid`` and ``simpo``): ``label_smoothing`` may be a tensor ``[B]`` of
ε_i in [0, 1], one per pair. With ε_i = 1 − C_i this is CREAM's consistency-regularized DPO (Wang et al.,
ICLR 2025, arXiv 2410.12735; ``sft_dpo_trainer.py`` of Raibows/CREAM): the loss of the judged order weighted
by the consistency rate C_i plus the loss of the reversed pair weighted by 1 − C_i,
``C·(−log σ(β·h)) + (1−C)·(−log σ(−β·h))`` — the smoothed logistic above, term for term. C = 1 is plain DPO.
The gradient in z is ``−(C − σ(z))``: C = 0.5 gives no gradient while the policy equals the reference (z = 0:
the judged and the reversed pair cancel) and otherwise pulls the margin back to 0 rather than teaching either
order; C < 0.5 trains the reversed preference.

Implicit rewards (detached, for logging): ``β·(π − ref)`` for the reference-based kinds (also ``ipo``,
whose rewards TRL does not length-normalize) and ``β·π/|y|`` for ``simpo`` and ``orpo``. Lengths are clamped to at
least 1 token, as TRL clamps them for ``ipo``.

:func:`rpo_term` is the NLL on the chosen completions that RPO adds to DPO (Pang et al. 2024, arXiv
2404.19733), normalized as TRL 1.16 does it (``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, α]``).
:func:`bradley_terry_loss` is the reward-model loss of TRL 1.16 ``RewardTrainer.compute_loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from posttrain.ops.checks import check_choice

PREFERENCE_KINDS = ("sigmoid", "robust", "ipo", "hinge", "simpo", "orpo")
LABEL_SMOOTHING_KINDS = ("sigmoid", "robust", "simpo")
PAIR_SMOOTHING_KINDS = ("sigmoid", "simpo")  # the smoothed logistic: any ε in [0, 1] is a convex mix
LENGTH_NORMALIZED_KINDS = ("ipo", "simpo", "orpo")
REFERENCE_FREE_KINDS = ("simpo", "orpo")


@dataclass(frozen=True)
class PreferenceLoss:
    """Per-pair losses ``[B]`` (unreduced; the caller takes the mean) and the detached implicit rewards ``[B]``."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    beta: float = 0.1,
    kind: str = "sigmoid",
    label_smoothing: float | torch.Tensor = 0.0,
    gamma: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> PreferenceLoss:
    """Per-pair preference loss of ``kind`` (see the module docstring for each formula).

    ``chosen_logps``/``rejected_logps`` are summed completion log-probs ``[B]`` and carry the gradient;
    the reference sums are detached. ``ipo``, ``simpo`` and ``orpo`` also need ``chosen_lengths`` and
    ``rejected_lengths`` (completion tokens per row); ``simpo`` and ``orpo`` take no reference log-probs;
    ``gamma`` is SimPO's target margin γ. ``label_smoothing`` is ε in [0, 0.5) for ``sigmoid``, ``robust`` and ``simpo``,
    or a tensor ``[B]`` of per-pair ε_i in [0, 1] for ``sigmoid`` and ``simpo`` (CREAM, module docstring).
    """
    _check_arguments(
        kind,
        beta,
        label_smoothing,
        gamma,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_lengths,
        rejected_lengths,
    )
    if kind in REFERENCE_FREE_KINDS:
        chosen_scores = chosen_logps / _lengths(chosen_lengths, chosen_logps)
        rejected_scores = rejected_logps / _lengths(rejected_lengths, rejected_logps)
        if kind == "simpo":
            losses = _smoothed_logistic(beta * (chosen_scores - rejected_scores) - gamma, label_smoothing)
        else:  # orpo, in float32 at least as TRL computes it
            chosen_scores, rejected_scores = (_at_least_float32(scores) for scores in (chosen_scores, rejected_scores))
            losses = -beta * F.logsigmoid(_log_odds(chosen_scores) - _log_odds(rejected_scores))
        return PreferenceLoss(
            losses=losses,
            chosen_rewards=beta * chosen_scores.detach(),
            rejected_rewards=beta * rejected_scores.detach(),
        )

    chosen_logratios = chosen_logps - ref_chosen_logps.detach()
    rejected_logratios = rejected_logps - ref_rejected_logps.detach()
    logits = beta * (chosen_logratios - rejected_logratios)
    if kind == "sigmoid":
        losses = _smoothed_logistic(logits, label_smoothing)
    elif kind == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(logits)
        flipped = -label_smoothing * F.logsigmoid(-logits)
        losses = (clean - flipped) / (1 - 2 * label_smoothing)
    elif kind == "hinge":
        losses = torch.relu(1 - logits)
    else:  # ipo
        averaged = chosen_logratios / _lengths(chosen_lengths, chosen_logps) - rejected_logratios / _lengths(
            rejected_lengths, rejected_logps
        )
        losses = (averaged - 1 / (2 * beta)) ** 2
    return PreferenceLoss(
        losses=losses,
        chosen_rewards=beta * chosen_logratios.detach(),
        rejected_rewards=beta * rejected_logratios.detach(),
    )


def rpo_term(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """RPO's NLL on the chosen completions as a token mean over the batch: ``−Σ_i π_c,i / Σ_i |y_c,i|``.

    This is TRL 1.16's ``sft`` loss type (``−mean`` of the chosen per-token log-probs over all chosen
    tokens of the batch), not a mean of per-row means (the paper divides each row by its own length).
    The trainer adds ``α·rpo_term`` to the mean DPO loss (RPO's α, TRL's ``loss_weights=[1, α]``).
    """
    total_tokens = chosen_lengths.to(chosen_logps.dtype).sum().clamp(min=1.0)
    return rpo_sum(chosen_logps) / total_tokens


def rpo_sum(chosen_logps: torch.Tensor) -> torch.Tensor:
    """The numerator of :func:`rpo_term`, ``−Σ_i π_c,i``: a trainer divides it by the step's chosen tokens."""
    return -chosen_logps.sum()


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coefficient: float | None = None,
) -> torch.Tensor:
    """Reward-model loss, a scalar: ``mean(−log σ(r_c − r_r − m)) + c·mean((r_c + r_r)²)``.

    Bradley–Terry pairwise likelihood (Ouyang et al. 2022, arXiv 2203.02155, Eq. 1) with the optional
    per-pair margin ``m`` of Llama 2 (Touvron et al. 2023, arXiv 2307.09288, Eq. 2) and the optional
    centering term of Eisenstein et al. 2023 (arXiv 2312.09244, Eq. 2), as TRL 1.16
    ``RewardTrainer.compute_loss`` computes it.
    """
    return bradley_terry_losses(chosen_rewards, rejected_rewards, margin, center_coefficient).mean()


def bradley_terry_losses(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                         margin: torch.Tensor | float | None = None,
                         center_coefficient: float | None = None) -> torch.Tensor:
    """Per-pair terms ``−log σ(r_c − r_r − m) + c·(r_c + r_r)²`` ``[n]``, whose mean is :func:`bradley_terry_loss`."""
    if center_coefficient is not None and center_coefficient < 0:
        raise ValueError(f"center_coefficient must be >= 0, got {center_coefficient}; "
                         "use a small positive value such as 0.01, or leave it unset")
    difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin
    losses = -F.logsigmoid(difference)
    if center_coefficient is not None:
        losses = losses + center_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses


def regression_loss(scores: torch.Tensor, labels: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """Squared error of a scalar head, ``Σ_i (s_i − y_i)² / N`` with ``N = normalizer`` (default: the rows
    here, i.e. the MSE; give the global batch's row count to get this micro-batch's share of its mean). RM-NLHF's
    MetaRM regresses the rule reward this way (Wang et al. 2026, arXiv 2601.07349; methods.md §4.5)."""
    errors = squared_errors(scores, labels)
    return errors.sum() / (len(errors) if normalizer is None else normalizer)


def squared_errors(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row ``(s_i − y_i)²`` ``[n]``: the terms :func:`regression_loss` sums."""
    return (scores - labels.to(scores.dtype)) ** 2


def _smoothed_logistic(logits: torch.Tensor, label_smoothing: float | torch.Tensor) -> torch.Tensor:
    """``−(1−ε)·log σ(z) − ε·log σ(−z)``: the logistic loss with conservative label smoothing ε (one value, or
    one per row)."""
    if isinstance(label_smoothing, torch.Tensor):
        label_smoothing = label_smoothing.to(device=logits.device, dtype=logits.dtype)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def _log_odds(average_logps: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 − p))`` of ``p = exp(a)``: ``a − log(1 − exp(a))``, the second term computed as ``log1p(−exp(a))``
    below ``−log 2`` and ``log(−expm1(a))`` above, where each is accurate (Mächler's log1mexp)."""
    log_one_minus = torch.where(average_logps < -math.log(2), torch.log1p(-torch.exp(average_logps)),
                                torch.log(-torch.expm1(average_logps)))
    return average_logps - log_one_minus


def _at_least_float32(values: torch.Tensor) -> torch.Tensor:
    return values if values.dtype == torch.float64 else values.float()


def _lengths(lengths: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return lengths.to(like.dtype).clamp(min=1.0)


def _check_arguments(
    kind: str,
    beta: float,
    label_smoothing: float | torch.Tensor,
    gamma: float,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    chosen_lengths: torch.Tensor | None,
    rejected_lengths: torch.Tensor | None,
) -> None:
    check_choice(kind, PREFERENCE_KINDS, "preference loss kind")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}; "
                         "use a positive beta such as 0.1")
    if isinstance(label_smoothing, torch.Tensor):
        _check_pair_smoothing(kind, label_smoothing)
    elif not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}; "
                         "use the assumed label-flip rate, e.g. 0.1, or 0 for none")
    elif label_smoothing > 0 and kind not in LABEL_SMOOTHING_KINDS:
        raise ValueError(f"the {kind!r} loss has no label smoothing, got label_smoothing = {label_smoothing}"
                         "; "
                         f"set label_smoothing to 0 or use one of: {', '.join(LABEL_SMOOTHING_KINDS)}")
    if gamma != 0 and kind != "simpo":
        raise ValueError(f"gamma (SimPO's target margin) is {gamma} but the loss kind is {kind!r}; "
                         "set gamma to 0 or use kind 'simpo'")
    has_reference = (ref_chosen_logps is not None, ref_rejected_logps is not None)
    if kind in REFERENCE_FREE_KINDS and any(has_reference):
        raise ValueError(f"the {kind!r} loss is reference-free but reference log-probs were given; "
                         "drop the reference model, or use a reference-based kind")
    if kind not in REFERENCE_FREE_KINDS and not all(has_reference):
        raise ValueError(f"the {kind!r} loss needs reference log-probs for both the chosen and the rejected completions; "
                         "pass ref_chosen_logps and ref_rejected_logps (a reference model's summed log-probs)")
    if kind in LENGTH_NORMALIZED_KINDS and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"the {kind!r} loss averages log-probs over completion tokens and needs their lengths; "
                         "pass chosen_lengths and rejected_lengths (completion tokens per row)")


def _check_pair_smoothing(kind: str, label_smoothing: torch.Tensor) -> None:
    """Per-pair ε_i: a 1-D tensor in [0, 1] for the kinds whose loss is the smoothed logistic."""
    if kind not in PAIR_SMOOTHING_KINDS:
        raise ValueError(f"per-pair label smoothing is a mix of the judged and the reversed order's logistic loss, "
                         f"which the {kind!r} loss does not have; use one of: {', '.join(PAIR_SMOOTHING_KINDS)}")
    if label_smoothing.dim() != 1 or not bool(((label_smoothing >= 0) & (label_smoothing <= 1)).all()):
        raise ValueError("per-pair label smoothing must be a 1-D tensor with one ε in [0, 1] per pair; "
                         "give 1 − C for a consistency rate C in [0, 1]")
