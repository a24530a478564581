"""Clipped policy-gradient loss of the GRPO family, aggregated as TRL 1.16 ``GRPOTrainer._compute_loss``.

Per response token t of row i, with ``ρ = exp(log π_θ − log π_old)`` and the row's advantage ``A_i`` (or the
token's own ``A_{i,t}`` when advantages are ``[B, T]``: the KL in the reward, :func:`posttrain.ops.kl_penalized_advantages`):

    ℓ_t = −min(ρ·A_i, clip(ρ, 1 − ε_low, 1 + ε_high)·A_i) + β·KL_t
    KL_t = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1          (k3 estimator, Schulman 2020)

(:func:`kl_estimate` gives the k1 and k2 estimators too). The entropy bonus ``c`` subtracts ``c·H̄`` from the
reduced loss, ``H̄ = Σ m H / Σ m`` the token mean of π_θ's per-token entropy over the response tokens, whatever
the kind (TRL 1.16's ``entropy_coef``: "L = L_policy − coef · H"); :func:`policy_loss_sum` returns ``Σ m H``
(``entropy_sum``, with its gradient) for a trainer to divide by the step's tokens.

ε_high > ε_low is DAPO's clip-higher (Yu et al. 2025, arXiv 2503.14476, §3.1). The kinds differ only in
how ``ℓ`` is reduced over the masked tokens ``m``:

* ``grpo``    — ``mean_i (Σ_t m ℓ / Σ_t m)``: each row's token mean, averaged over rows (Shao et al. 2024).
* ``bnpo``    — ``Σ m ℓ / Σ m``: token mean over this batch.
* ``dr_grpo`` — ``Σ m ℓ / (rows × L)`` with L the maximum completion length (Liu et al. 2025,
  arXiv 2503.20783). TRL divides by its ``max_completion_length`` setting; it defaults here to
  ``mask.shape[1]``, which is the same when completions are padded to the maximum length.
* ``dapo``    — ``Σ m ℓ / N`` with N the number of response tokens of the whole generation batch (DAPO's
  token-level loss), so micro-batches of one generation batch sum to its token mean. N defaults to
  ``Σ m`` (then equal to ``bnpo``).
* ``gspo``    — GSPO (Zheng et al. 2025, arXiv 2507.18071, eq. 5–7): one importance ratio per sequence, the
  length-normalized ``s_i = exp(Σ_t m (log π_θ − log π_old) / Σ_t m)``, clipped per sequence (the paper uses
  ε ≈ 3e-4 / 4e-4), in place of ρ for every token of row i, reduced as ``grpo``. This is TRL 1.16's
  ``importance_sampling_level="sequence"`` with ``loss_type="grpo"``; the gradient flows through every token's
  log-prob in ``s_i``.

Each kind is a sum divided by a count: :func:`policy_loss_sum` returns the sum ``S`` (``grpo``:
``Σ_i Σ_t m ℓ / Σ_t m``; ``bnpo``/``dapo``: ``Σ m ℓ``; ``dr_grpo``: ``Σ m ℓ / L``) and
``POLICY_LOSS_TOTALS[kind]`` names the count (``rows`` or ``tokens``). :func:`policy_loss` divides by this
batch's count (TRL's reduction of one batch); a trainer divides by the whole step's count instead, so
micro-batches sum to the loss of one big batch. TRL further divides ``grpo``/``bnpo``/``dr_grpo`` by the
number of accumulation steps, while ``dapo``'s N already spans the generation batch (TRL's
``num_items_in_batch`` with ``steps_per_generation`` equal to the accumulation steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from posttrain.ops.checks import check_choice

POLICY_LOSS_KINDS = ("grpo", "bnpo", "dr_grpo", "dapo", "gspo")
POLICY_LOSS_TOTALS = {"grpo": "rows", "bnpo": "tokens", "dr_grpo": "rows", "dapo": "tokens", "gspo": "rows"}


@dataclass(frozen=True)
class PolicyLoss:
    """A policy loss and its detached statistics (token means over the response tokens of the batch).

    ``clip_low``: fraction of tokens with ``ρ < 1 − ε_low`` and ``A < 0`` (clipped from below);
    ``clip_high``: ``ρ > 1 + ε_high`` and ``A > 0``; ``clip_region``: either. ``kl`` is the mean estimated KL to
    the reference (``None`` without ``ref_logprobs``); ``ratio`` is the mean importance ratio ρ.
    """

    loss: torch.Tensor
    clip_low: torch.Tensor
    clip_high: torch.Tensor
    clip_region: torch.Tensor
    ratio: torch.Tensor
    kl: torch.Tensor | None = None
    entropy_sum: torch.Tensor | None = None  # Σ m·H over the response tokens, with gradient (given the entropy)


KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from tokens sampled from π_θ, with ``r = log π_ref − log π_θ``
    (Schulman, "Approximating KL divergence", 2020; OpenRLHF's and verl's ``kl_estimator`` / ``kl_loss_type``):

    * ``k1 = −r`` — unbiased, high variance, negative on some tokens;
    * ``k2 = r² / 2`` — biased (second order in r), low variance, never negative;
    * ``k3 = exp(r) − r − 1`` — unbiased and never negative (TRL's GRPO KL; the default).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {KL_ESTIMATORS}")
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    return torch.exp(log_ratio) - log_ratio - 1



def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "dapo",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    num_active_tokens: float | torch.Tensor | None = None,
    max_completion_length: int | None = None,
    behaviour_weights: torch.Tensor | None = None,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> PolicyLoss:
    """Clipped surrogate loss (plus ``β``·KL, estimated per token by ``kl_estimator``: :func:`kl_estimate`) reduced
    per ``kind`` over this batch (the module docstring).

    ``logprobs``, ``old_logprobs``, ``ref_logprobs`` and ``mask`` are ``[B, T]``; ``advantages`` is ``[B]``
    (one per row) or ``[B, T]``. Only ``logprobs`` carries a gradient: ``old_logprobs``,
    ``ref_logprobs`` and ``advantages`` are detached. ``num_active_tokens`` is ``dapo``'s N (default
    ``Σ mask``) and ``max_completion_length`` is ``dr_grpo``'s L. The KL enters the loss only when
    ``beta > 0``; with ``ref_logprobs`` and ``beta = 0`` it is still reported in the statistics.
    ``behaviour_weights``: see :func:`policy_loss_sum`. ``entropy`` (``[B, T]``, π_θ's per-token entropy, with
    gradient) and ``entropy_coef`` c subtract the bonus ``c · Σ m H / Σ m`` (the module docstring).
    """
    if entropy_coef and entropy is None:
        raise ValueError(f"an entropy bonus entropy_coef = {entropy_coef} needs the per-token entropy")
    result = policy_loss_sum(logprobs, old_logprobs, advantages, mask, kind, eps_low, eps_high, ref_logprobs,
                             beta, max_completion_length, behaviour_weights, kl_estimator, entropy)
    count = mask.shape[0] if POLICY_LOSS_TOTALS[kind] == "rows" else mask.sum()
    if kind == "dapo" and num_active_tokens is not None:
        count = num_active_tokens
    loss = result.loss / torch.as_tensor(count, dtype=result.loss.dtype).clamp(min=1.0)
    if entropy_coef:
        loss = loss - entropy_coef * result.entropy_sum / mask.sum().clamp(min=1.0)
    return replace(result, loss=loss)


def policy_loss_sum(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    kind: str = "dapo", eps_low: float = 0.2, eps_high: float = 0.2,
                    ref_logprobs: torch.Tensor | None = None, beta: float = 0.0,
                    max_completion_length: int | None = None,
                    behaviour_weights: torch.Tensor | None = None, kl_estimator: str = "k3",
                    entropy: torch.Tensor | None = None) -> PolicyLoss:
    """:func:`policy_loss` before the division by the count ``POLICY_LOSS_TOTALS[kind]``: its ``loss`` is the
    sum ``S`` of the module docstring (``grpo``: each row's token mean, summed over rows; ``bnpo``/``dapo``: the
    masked token sum; ``dr_grpo``: the masked token sum ÷ L, L = ``max_completion_length`` or ``mask.shape[1]``).
    The statistics are this batch's token means, as in :func:`policy_loss`.

    ``behaviour_weights`` (``[B, T]`` or ``[B, 1]``, detached; :func:`behaviour_correction`) multiply the clipped
    surrogate of each token before the KL term is added: ``ℓ_t = −w_t·min(ρA, clip(ρ)A) + β·KL_t``, the
    correction for rollouts drawn by an engine whose probabilities differ from the learner's (TRL 1.16 applies
    its ``importance_sampling_ratio`` at the same place)."""
    _check_arguments(logprobs, old_logprobs, advantages, mask, kind, ref_logprobs, beta)
    mask = mask.to(logprobs.dtype)
    advantages = advantages.detach()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    log_ratio = logprobs - old_logprobs.detach()
    if kind == "gspo":  # one length-normalized ratio per sequence ([B, 1])
        log_ratio = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(ratio * advantages, clipped_ratio * advantages)
    if behaviour_weights is not None:
        per_token = per_token * behaviour_weights.detach().to(per_token.dtype)
    kl = None
    if ref_logprobs is not None:
        kl = kl_estimate(logprobs, ref_logprobs.detach(), kl_estimator)
        if beta > 0:
            per_token = per_token + beta * kl
    masked = per_token * mask
    if kind in ("grpo", "gspo"):
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
    elif kind == "dr_grpo":
        loss = masked.sum() / (mask.shape[1] if max_completion_length is None else max_completion_length)
    else:
        loss = masked.sum()

    clip_low = (ratio < 1 - eps_low) & (advantages < 0)
    clip_high = (ratio > 1 + eps_high) & (advantages > 0)
    return PolicyLoss(
        loss=loss,
        clip_low=_token_mean(clip_low, mask),
        clip_high=_token_mean(clip_high, mask),
        clip_region=_token_mean(clip_low | clip_high, mask),
        ratio=_token_mean(ratio, mask),
        kl=None if kl is None else _token_mean(kl, mask),
        entropy_sum=None if entropy is None else (entropy * mask).sum(),
    )


BEHAVIOUR_CORRECTIONS = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass(frozen=True)
class BehaviourCorrection:
    """Importance weights for the engine/learner mismatch and how large the mismatch was.

    ``weights`` is ``[B, T]`` (token modes) or ``[B, 1]`` (sequence modes); ``mean_abs_gap`` is the token mean of
    ``|log π_learner − log μ_engine|``; ``max_ratio`` the largest token ratio ``π/μ`` before truncation or masking;
    ``corrected`` the fraction of tokens whose weight was truncated or masked.
    """

    weights: torch.Tensor
    mean_abs_gap: torch.Tensor
    max_ratio: torch.Tensor
    corrected: torch.Tensor


def behaviour_correction(learner_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor,
                         mode: str = "token_truncate", cap: float | None = 2.0,
                         floor: float | None = None) -> BehaviourCorrection:
    """Truncated (or masked) importance weights of rollouts sampled by an engine ``μ`` for a learner ``π``.

    Per token ``r_t = exp(log π(y_t) − log μ(y_t))`` (``token_*``) or per row ``r = exp(Σ_t m_t·(log π − log μ))``
    (``sequence_*``); ``*_truncate``: ``w = clamp(r, floor, cap)``; ``*_mask``: ``w = r`` inside
    ``[floor, cap]``, else 0. Truncated importance sampling (TIS) is Yao et al. 2025, "Your Efficient RL Framework
    Secretly Brings You Off-Policy RL Training"; the four modes and their bounds are TRL 1.16's
    ``vllm_importance_sampling_mode`` / ``_clip_max`` / ``_clip_min`` (computed as in ``GRPOTrainer``). Tokens
    outside ``mask`` get a zero gap (weight 1 in token modes). Inputs are ``[B, T]``; nothing carries a gradient.
    """
    check_choice(mode, BEHAVIOUR_CORRECTIONS, "behaviour correction mode")
    if learner_logprobs.shape != engine_logprobs.shape or learner_logprobs.shape != mask.shape:
        raise ValueError(f"learner_logprobs {tuple(learner_logprobs.shape)}, engine_logprobs "
                         f"{tuple(engine_logprobs.shape)} and mask {tuple(mask.shape)} must have one shape")
    mask = mask.to(learner_logprobs.dtype)
    gap = torch.nan_to_num((learner_logprobs.detach() - engine_logprobs.detach()) * mask, nan=0.0)
    log_ratio = gap.sum(-1, keepdim=True) if mode.startswith("sequence") else gap
    ratio = torch.exp(log_ratio)
    low = -math.inf if floor is None else floor
    high = math.inf if cap is None else cap
    outside = (ratio < low) | (ratio > high)
    if mode.endswith("mask"):
        weights = ratio.masked_fill(outside, 0.0)
    else:
        weights = ratio if floor is None and cap is None else ratio.clamp(min=floor, max=cap)
    return BehaviourCorrection(weights=weights, mean_abs_gap=_token_mean(gap.abs(), mask),
                               max_ratio=(torch.exp(gap) * mask).max(), corrected=_token_mean(outside, mask))


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    values = values.detach().to(mask.dtype).expand_as(mask)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _check_arguments(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    kind: str,
    ref_logprobs: torch.Tensor | None,
    beta: float,
) -> None:
    check_choice(kind, POLICY_LOSS_KINDS, "policy loss kind")
    if beta > 0 and ref_logprobs is None:
        raise ValueError(f"a KL coefficient beta = {beta} needs reference log-probs: pass ref_logprobs "
                         "(a reference model's per-token log-probs) or set beta to 0")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    shapes = {"old_logprobs": old_logprobs.shape, "mask": mask.shape}
    if ref_logprobs is not None:
        shapes["ref_logprobs"] = ref_logprobs.shape
    for name, shape in shapes.items():
        if shape != logprobs.shape:
            raise ValueError(
                f"{name} has shape {tuple(shape)}, expected {tuple(logprobs.shape)} like logprobs"
            )
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(
            f"advantages have shape {tuple(advantages.shape)}, "
            f"expected [{logprobs.shape[0]}] or {tuple(logprobs.shape)}"
        )
