"""The critic's loss of PPO: squared error to the GAE returns, with value clipping.

Per response token t, with the critic's value ``V_t``, its value when the rollout was scored ``V_t^old``, the
return ``R_t`` (:func:`posttrain.ops.gae_advantages`) and the clip range ``ε_v``:

    V_t^clip = V_t^old + clip(V_t − V_t^old, −ε_v, ε_v)
    ℓ_t      = ½·max((V_t − R_t)², (V_t^clip − R_t)²)          (without clipping: ½·(V_t − R_t)²)

The clipped value objective of PPO's reference implementation (OpenAI baselines ``ppo2``; Schulman et al. 2017,
arXiv 1707.06347), as OpenRLHF's ``ValueLoss``, verl's ``compute_value_loss`` and TRL's former ``PPOTrainer``
(``vf_losses1``/``vf_losses2``, ``vf_clipfrac``) compute it. :func:`value_loss_sum` returns ``Σ m·ℓ``; a trainer
divides by the response tokens of its whole step (the normalization rule), so a batch's token mean is OpenRLHF's
and TRL's ``½·masked_mean(max(...))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ValueLoss:
    """``loss``: ``Σ m·ℓ`` (with gradient); ``clipped``: the number of response tokens whose clipped error is the
    larger one (TRL's ``vf_clipfrac`` numerator); both over the batch."""

    loss: torch.Tensor
    clipped: torch.Tensor


def value_loss_sum(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float | None = 0.2) -> ValueLoss:
    """The clipped value loss summed over the response tokens (the module docstring); ``clip=None``: unclipped.

    All tensors ``[B, T]``; only ``values`` carries a gradient."""
    if not (values.shape == old_values.shape == returns.shape == mask.shape):
        raise ValueError(f"values {tuple(values.shape)}, old_values {tuple(old_values.shape)}, returns "
                         f"{tuple(returns.shape)} and mask {tuple(mask.shape)} must have one shape")
    if clip is not None and clip <= 0:
        raise ValueError(f"the value clip range must be > 0 (or None: no clipping), got {clip}")
    mask = mask.to(values.dtype)
    returns, old_values = returns.detach().to(values.dtype), old_values.detach().to(values.dtype)
    error = (values - returns).square()
    if clip is None:
        return ValueLoss(0.5 * (error * mask).sum(), torch.zeros((), device=values.device))
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped_error = (clipped_values - returns).square()
    loss = 0.5 * (torch.max(error, clipped_error) * mask).sum()
    return ValueLoss(loss, ((clipped_error > error).to(mask.dtype) * mask).sum().detach())
