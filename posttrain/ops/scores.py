"""Scores of whole responses computed from the model's own distribution: LaSeR's last-token self-reward
and self-certainty.

* :func:`laser_score` — ``r_s = β_v · (log π(z_c | x, y, EOS) − c_ref)`` (Yang et al., 2025, "LaSeR:
  Reinforcement Learning with Last-Token Self-Rewarding", arXiv 2510.14943, §3). With a reserved token
  ``z_c`` whose reference log-probability after EOS is the near-constant ``c_ref``, the closed form of
  KL-regularized self-verification makes ``r_s`` an estimate of the verifier reward ``r_v ∈ {0, 1}``.
* :func:`self_certainty` — the mean over response positions of ``KL(U ‖ p_t)``, the divergence of the
  next-token distribution from uniform (Kang, Zhao & Song, 2025, "Scalable Best-of-N Selection for Large
  Language Models via Self-Certainty", NeurIPS, eq. for SC; code ``confidence_list.py``).
"""

from __future__ import annotations

import math

import torch

from posttrain.ops.logprobs import DEFAULT_CHUNK, _at_least_float32


def laser_score(logprob_reserved, c_ref: float = -23.0, beta_v: float = 0.1):
    """LaSeR's last-token self-rewarding score ``r_s = β_v · (log π_θ(z_c | x, y, EOS) − c_ref)``.

    ``logprob_reserved`` is the log-probability of the reserved token ``z_c`` read at the EOS position (a
    tensor or a float); the result has the same type and shape. Defaults are the paper's Qwen2.5 settings
    (``ref_model_log_ratio_constant = −23``, ``self_reward_kl_coef = 0.1``): a target of ``r_s = 1`` means
    ``log π(z_c) = c_ref + 1/β_v = −13``.
    """
    if not beta_v > 0:
        raise ValueError(f"beta_v must be > 0, got {beta_v}")
    return beta_v * (logprob_reserved - c_ref)


def token_self_certainty(logits: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """``KL(U ‖ p_t) = −(1/V) Σ_j log p_tj − log V`` at every position of ``logits`` (``[..., V]``).

    With ``log p_tj = z_tj − logsumexp(z_t)`` this is ``logsumexp(z_t) − mean_j z_tj − log V``, so no
    log-softmax is formed; rows are processed ``chunk_size`` at a time (float32 for half-precision input).
    It is 0 for a uniform distribution and grows as the distribution concentrates.
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        rows = _at_least_float32(flat[start : start + chunk_size])
        pieces.append(torch.logsumexp(rows, dim=-1) - rows.mean(dim=-1) - math.log(vocab))
    out = torch.cat(pieces) if pieces else _at_least_float32(flat.new_zeros(0))
    return out.reshape(logits.shape[:-1])


def self_certainty(logits: torch.Tensor, mask: torch.Tensor, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Self-certainty of each response: ``SC = (1/n) Σ_{t: mask_t = 1} KL(U ‖ p_t)`` → ``[B]``.

    ``logits`` is ``[B, T, V]`` where ``logits[:, t]`` is the distribution that produced response token
    ``t``; ``mask`` is ``[B, T]`` with 1 on response positions. A row without response positions scores 0.
    """
    per_token = token_self_certainty(logits, chunk_size)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)
