"""KTO: Kahneman–Tversky optimization on unpaired completions (Ethayarajh et al. 2024, arXiv 2402.01306).

Each completion ``y`` of a prompt ``x`` is labelled desirable or undesirable. With the implied reward
``r = π − ref`` (summed completion log-probs under the policy and the frozen reference) and the reference point
``z₀`` (below), the loss of one completion is (the paper's Eq. 7 up to the constant ``λ_y``, as TRL 1.16
``KTOTrainer`` with ``loss_type="kto"`` computes it):

* desirable:   ``λ_D · (1 − σ(β·(r − z₀)))``
* undesirable: ``λ_U · (1 − σ(β·(z₀ − r)))``

``z₀`` estimates ``KL(π_θ(y'|x) ‖ π_ref(y'|x))`` from *mismatched* pairs — each prompt with the completion of
another example — as ``max(0, mean(π(y'|x) − ref(y'|x)))``, detached: no gradient flows through it (paper §3.2,
TRL's ``kl``). The implicit rewards are ``β·r``. The paper suggests weights with
``λ_D·n_D / (λ_U·n_U)`` in ``[1, 4/3]`` for ``n_D`` desirable and ``n_U`` undesirable examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class KTOLoss:
    """Per-completion weighted losses ``[B]`` (unreduced; the caller divides their sum) and the detached implicit
    rewards ``β·(π − ref)`` ``[B]``."""

    losses: torch.Tensor
    rewards: torch.Tensor


def kto_reference_point(mismatched_logps: torch.Tensor, ref_mismatched_logps: torch.Tensor) -> torch.Tensor:
    """KTO's ``z₀ = max(0, mean(π(y'|x) − ref(y'|x)))`` over mismatched pairs ``[M]``, detached (a scalar)."""
    if mismatched_logps.numel() == 0:
        raise ValueError("the KTO reference point needs at least one mismatched (prompt, completion) pair")
    return (mismatched_logps.detach() - ref_mismatched_logps.detach()).mean().clamp(min=0)


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KTOLoss:
    """KTO losses of completions with summed log-probs ``logps`` ``[B]`` (carrying the gradient), reference sums
    ``ref_logps`` ``[B]`` and labels ``desirable`` ``[B]`` (bool), at ``reference_point`` ``z₀`` (see the module
    docstring for the formula)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}; use a positive beta such as 0.1")
    if not (desirable_weight > 0 and undesirable_weight > 0):
        raise ValueError(f"the KTO weights must be > 0, got desirable {desirable_weight} and undesirable "
                         f"{undesirable_weight}; use 1.0 for both, or weights that balance the two labels")
    rewards = logps - ref_logps.detach()
    z0 = torch.as_tensor(reference_point, dtype=logps.dtype, device=logps.device).detach()
    desirable = desirable.to(device=logps.device, dtype=torch.bool)
    margin = torch.where(desirable, rewards - z0, z0 - rewards)
    weights = torch.where(desirable, desirable_weight, undesirable_weight).to(logps.dtype)
    return KTOLoss(losses=weights * (1 - F.sigmoid(beta * margin)), rewards=beta * rewards.detach())
