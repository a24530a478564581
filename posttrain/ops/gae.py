"""Generalized advantage estimation (PPO).

A completion is an episode whose actions are its tokens. On right-padded rows (per-token tensors ``[B, T]``,
``mask`` 1 on the response tokens, which form one block per row), with ``V_t`` the critic's value of the state
before token ``t`` and ``r_t`` the token rewards (:func:`posttrain.ops.token_rewards`):

* **GAE** (:func:`gae_advantages`; Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
  Advantage Estimation", arXiv 1506.02438, eq. 16; used by PPO, Schulman et al. 2017, arXiv 1707.06347, eq. 11–12),
  backwards over each row's response tokens:

      δ_t = r_t + γ·V_{t'} − V_t          A_t = δ_t + γλ·A_{t'}          returns  R_t = A_t + V_t

  where ``t'`` is the next response token of the row; after the last one ``V_{t'} = A_{t'} = 0`` (the episode
  ends). Positions outside ``mask`` are skipped (they pass the running values through, as verl's
  ``compute_gae_advantage_return``) and get 0. ``γ = λ = 1`` gives ``A_t = Σ_{k≥t} r_k − V_t`` (the Monte-Carlo
  return minus the value); ``λ = 0`` gives the one-step TD errors ``A_t = δ_t``.
"""

from __future__ import annotations

import torch


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
