"""Supervised fine-tuning losses over per-token target log-probabilities.

All kinds reduce as a token mean over the batch: the sum over kept tokens divided by the number of
response tokens ``N = Σ mask`` (or by ``num_tokens`` when the caller normalizes over a global batch
split across processes). For ``profit`` the tokens it masks out still count in ``N``.

* ``nll``    — ``L = −(1/N) Σ_t m_t log p_θ(y_t)`` (standard SFT).
* ``profit`` — ProFit (Liu et al., 2026, arXiv 2601.09195, Eq. 5): keep a target token only if its
  stop-gradient probability exceeds τ, ``L = −(1/N) Σ_t m_t·1[sg p_θ(y_t) > τ]·log p_θ(y_t)``. The
  denominator counts every response token, as the paper's code (``_profit_cross_entropy``) divides by
  the number of label tokens before masking; τ = 0.1 is the paper's default.
* ``profit_lower`` — the paper's "lower" ablation, keep only ``sg p ≤ τ`` (the direction check).
* ``dft``    — Dynamic Fine-Tuning (Wu et al., 2025, arXiv 2508.05629): ``L = −(1/N) Σ_t m_t·sg(p_θ(y_t))·log p_θ(y_t)``.
"""

from __future__ import annotations

import torch

SFT_KINDS = ("nll", "profit", "profit_lower", "dft")


def profit_keep_mask(logprobs: torch.Tensor, mask: torch.Tensor, tau: float = 0.1, keep: str = "higher") -> torch.Tensor:
    """ProFit's token selection: ``m_t·1[sg p(y_t) > τ]`` (``keep="higher"``) or ``m_t·1[sg p(y_t) ≤ τ]`` ("lower")."""
    probs = logprobs.detach().exp()
    selected = probs > tau if keep == "higher" else probs <= tau
    return mask.to(logprobs.dtype) * selected.to(logprobs.dtype)


def sft_token_weights(logprobs: torch.Tensor, mask: torch.Tensor, kind: str = "nll", tau: float = 0.1) -> torch.Tensor:
    """Per-token weights ``w_t`` such that the loss is ``−Σ w_t log p(y_t) / N`` (weights carry no gradient)."""
    mask = mask.to(logprobs.dtype)
    if kind == "nll":
        return mask
    if kind == "profit":
        return profit_keep_mask(logprobs, mask, tau, keep="higher")
    if kind == "profit_lower":
        return profit_keep_mask(logprobs, mask, tau, keep="lower")
    if kind == "dft":
        return mask * logprobs.detach().exp()
    raise ValueError(f"unknown SFT loss kind {kind!r}; expected one of {', '.join(SFT_KINDS)}")


def sft_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "nll",
    tau: float = 0.1,
    num_tokens: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-mean SFT loss ``−Σ_t w_t log p(y_t) / N`` with ``w`` from :func:`sft_token_weights`.

    ``logprobs`` and ``mask`` have the same shape; ``N = Σ mask`` unless ``num_tokens`` is given
    (the response-token count of the whole global batch, for exact multi-process normalization).
    A batch with no response tokens gives a zero loss that still carries a gradient graph.
    """
    total = sft_loss_sum(logprobs, mask, kind, tau)
    denominator = mask.sum() if num_tokens is None else num_tokens
    return total / torch.clamp(torch.as_tensor(denominator, dtype=total.dtype), min=1.0)


def sft_loss_sum(logprobs: torch.Tensor, mask: torch.Tensor, kind: str = "nll", tau: float = 0.1) -> torch.Tensor:
    """The numerator of :func:`sft_loss`, ``−Σ_t w_t log p(y_t)``: a trainer divides it by the step's token count."""
    return -(sft_token_weights(logprobs, mask, kind, tau) * logprobs).sum()
