"""PPO's per-token rewards, generalized advantage estimation and advantage whitening.

A completion is an episode whose actions are its tokens. On right-padded rows (per-token tensors ``[B, T]``,
``mask`` 1 on the response tokens, which form one block per row), with ``V_t`` the critic's value of the state
before token ``t``:

* **token rewards** (:func:`token_rewards`) — the sequence's scalar reward ``R`` on its last response token, and,
  when the KL penalty is in the reward, ``−β·KL_t`` on every response token:
  ``r_t = −β·KL_t + [t = last]·R`` (Ziegler et al. 2019, arXiv 1909.08593, eq. 2; Ouyang et al. 2022 §3.5; the
  layout of OpenRLHF's ``compute_reward`` and TRL's former ``PPOTrainer``, with ``KL_t = log π_old − log π_ref``,
  the ``k1`` estimate of :func:`posttrain.ops.kl_estimate`).
* **GAE** (:func:`gae_advantages`; Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
  Advantage Estimation", arXiv 1506.02438, eq. 16; used by PPO, Schulman et al. 2017, arXiv 1707.06347, eq. 11–12),
  backwards over each row's response tokens:

      δ_t = r_t + γ·V_{t'} − V_t          A_t = δ_t + γλ·A_{t'}          returns  R_t = A_t + V_t

  where ``t'`` is the next response token of the row; after the last one ``V_{t'} = A_{t'} = 0`` (the episode
  ends). Positions outside ``mask`` are skipped (they pass the running values through, as verl's
  ``compute_gae_advantage_return``) and get 0. ``γ = λ = 1`` gives ``A_t = Σ_{k≥t} r_k − V_t`` (the Monte-Carlo
  return minus the value); ``λ = 0`` gives the one-step TD errors ``A_t = δ_t``.
* **whitening** (:func:`whiten`) — ``(A − μ) / sqrt(σ² + ε)`` with the mean and the unbiased variance over all
  response tokens of the batch (verl's ``masked_whiten``; OpenRLHF's ``advantage normalization``); the trainer
  takes μ and σ² over the whole generation batch (:func:`masked_moments` of each part, summed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards ``r_t = −β·KL_t + [t = last response token]·R`` (the module docstring).

    ``scores`` is ``[B]`` (each sequence's reward ``R``), ``mask`` and ``kl`` are ``[B, T]``. A row without response
    tokens gets no reward. Returns ``[B, T]``, 0 outside ``mask``.
    """
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected [{mask.shape[0]}] (one per row)")
    if kl_coef and kl is None:
        raise ValueError(f"a KL coefficient {kl_coef} in the reward needs the per-token KL")
    mask = mask.to(torch.float32 if not scores.is_floating_point() else scores.dtype)
    rewards = torch.zeros_like(mask)
    if kl_coef:
        rewards = rewards - kl_coef * kl.detach().to(mask.dtype) * mask
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values  # -1: a row without response tokens
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += scores[rows].to(mask.dtype)
    return rewards


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantages and returns ``R_t = A_t + V_t`` of ``[B, T]`` token rewards and values (the module
    docstring); both ``[B, T]``, 0 outside ``mask``, without gradient."""
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma = {gamma}, lam = {lam}")
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must have one shape")
    rewards, values = rewards.detach().float(), values.detach().float()
    mask = mask.to(torch.float32)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        on = mask[:, t]
        advantages[:, t] = advantage * on
        next_value = on * values[:, t] + (1 - on) * next_value  # a skipped position passes the running values on
        next_advantage = on * advantage + (1 - on) * next_advantage
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class Moments:
    """Count, sum and sum of squares of the masked values: summed over parts, they give the whole's mean and
    variance."""

    count: float
    total: float
    squares: float

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.count + other.count, self.total + other.total, self.squares + other.squares)

    @property
    def mean(self) -> float:
        return self.total / max(self.count, 1.0)

    @property
    def variance(self) -> float:
        """The unbiased variance (÷ (n − 1)); 0 for fewer than two values."""
        if self.count < 2:
            return 0.0
        return max(self.squares - self.count * self.mean**2, 0.0) / (self.count - 1)


def masked_moments(values: torch.Tensor, mask: torch.Tensor) -> Moments:
    """The :class:`Moments` of ``values`` where ``mask`` is 1."""
    values, mask = values.detach().double(), mask.detach().double()
    return Moments(float(mask.sum()), float((values * mask).sum()), float((values.square() * mask).sum()))


def whiten(values: torch.Tensor, mask: torch.Tensor, moments: Moments, eps: float = 1e-8) -> torch.Tensor:
    """``(x − μ) / sqrt(σ² + eps)`` on ``mask`` (0 elsewhere), μ and σ² from ``moments`` (the whole batch's)."""
    scale = (moments.variance + eps) ** -0.5
    return (values - moments.mean) * scale * mask.to(values.dtype)
