"""LaSeR: last-token self-rewarding (Yang et al. 2025, arXiv 2510.14943; methods.md §6.2).

The self-reward ``r_s = β_v·(log π_θ(z_c | x, y, EOS) − c_ref)`` of a completion (``laser_score`` in
``posttrain.ops.scores``) is trained towards the verifier reward ``r_v ∈ {0, 1}`` by a class-balanced MSE,
and after a warm-up it is mixed into the GRPO advantage. The reductions follow the official code
(github.com/RUCBM/LaSeR, commit 48996f7: ``ray_trainer.py`` for the weights and the advantage
integration, ``dp_actor.py`` for the loss). Truncated completions (no EOS, so no ``z_c`` position) are
"invalid": they get no weight in the loss and a clipped score of 0 in the integration.
"""

from __future__ import annotations

import torch

from posttrain.errors import DataError


def laser_class_weights(verifier_rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Class-balanced weights ``w_i`` over the valid rows of a batch.

    With ``N_1``/``N_0`` the numbers of valid rows with ``r_v = 1``/``0`` and ``N = N_1 + N_0``:
    ``w_i = N/(2·N_1)`` if ``r_v,i = 1``, ``N/(2·N_0)`` if ``r_v,i = 0``, and ``0`` for invalid rows, so each
    class carries half of the total weight ``N``. When a class is empty the other keeps its formula
    (``N/(2·N) = ½`` for every valid row), and with no valid row every weight is 0 — both as the
    official code (``ray_trainer.py``, ``reweighting_factor``). Raises :class:`DataError` if a valid
    row's reward is not 0 or 1.
    """
    valid = _check_rows(verifier_rewards, valid, "verifier_rewards")
    _check_binary(verifier_rewards, valid)
    correct = valid & (verifier_rewards == 1)
    incorrect = valid & (verifier_rewards == 0)
    total = valid.sum()
    correct_weight = total / (2 * correct.sum().clamp(min=1))
    incorrect_weight = total / (2 * incorrect.sum().clamp(min=1))
    zero = torch.zeros((), dtype=torch.float32, device=verifier_rewards.device)
    weights = torch.where(correct, correct_weight.float(), zero)
    return torch.where(incorrect, incorrect_weight.float(), weights)


def laser_loss(
    scores: torch.Tensor,
    verifier_rewards: torch.Tensor,
    valid: torch.Tensor,
    balanced: bool = True,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-rewarding MSE ``L_SR = (1/B) Σ_i m_i·w_i·(r_s,i − r_v,i)²`` over all B rows.

    ``m_i = 1[valid]``; invalid rows add 0 but count in B, as the official loss (``dp_actor.py``).
    ``w`` is :func:`laser_class_weights` of these rows when ``balanced`` (pass ``class_weights`` computed
    over the whole generation batch when this is one micro-batch of it), else 1. The gradient flows
    through ``scores`` only. The total LaSeR objective is ``L_policy + α·L_SR`` (α = 0.1 in the paper).
    """
    return laser_loss_sum(scores, verifier_rewards, valid, balanced, class_weights) / scores.numel()


def laser_loss_sum(scores: torch.Tensor, verifier_rewards: torch.Tensor, valid: torch.Tensor, balanced: bool = True,
                   class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The numerator of :func:`laser_loss`, ``Σ_i m_i·w_i·(r_s,i − r_v,i)²``: a trainer divides it by the
    step's row count."""
    valid = _check_rows(verifier_rewards, valid, "verifier_rewards")
    if scores.shape != verifier_rewards.shape:
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected {tuple(verifier_rewards.shape)}")
    if class_weights is None:
        class_weights = laser_class_weights(verifier_rewards, valid) if balanced else valid.to(scores.dtype)
    weights = class_weights.to(scores.dtype) * valid.to(scores.dtype)
    squared_error = (scores - verifier_rewards.to(scores.dtype).detach()) ** 2
    return (weights * squared_error).sum()


def self_reward_advantages(
    scores: torch.Tensor,
    valid: torch.Tensor,
    advantages: torch.Tensor,
    group_size: int,
    tau: float = 0.1,
    filter_threshold: float = 0.1,
) -> torch.Tensor:
    """LaSeR's advantage integration ``A'_i = (1 − τ)·A_i + τ·Â^s_i`` (methods.md §6.2).

    ``r̃_i = clip(r_s,i, 0, 1)`` for valid rows and 0 for truncated ones. In each group of ``group_size``
    consecutive rows, ``Â^s_i = (r̃_i − mean_g r̃)/std_g r̃`` where ``std_g > filter_threshold``; in a group
    whose scores barely differ, ``Â^s_i = A_i`` (so ``A'_i = A_i``). ``std_g`` is the unbiased standard
    deviation (÷ (G − 1), ``torch.std`` as the official ``ray_trainer.py``) and no epsilon is added: the
    threshold keeps it away from 0. ``scores`` (used detached) are the self-rewards ``r_s`` computed from the
    log-prob of ``z_c`` in the forward that appends ``EOS + z_c`` — not from a forward without ``z_c``,
    the released code's caveat in methods.md §6.2.
    """
    valid = _check_rows(scores, valid, "scores")
    if advantages.shape != scores.shape:
        raise ValueError(f"advantages have shape {tuple(advantages.shape)}, expected {tuple(scores.shape)}")
    if group_size < 2 or scores.numel() % group_size != 0:
        raise ValueError(f"{scores.numel()} self-reward scores do not form groups of G >= 2 (G = {group_size}); "
                         "use at least 2 samples per prompt and pass G consecutive rows for every prompt")
    clipped = torch.where(valid, scores.detach().clamp(0.0, 1.0), torch.zeros_like(scores))
    grouped = clipped.view(-1, group_size)
    spread = grouped.std(dim=1, correction=1, keepdim=True)
    normalized = (grouped - grouped.mean(dim=1, keepdim=True)) / spread
    spread_enough = (spread > filter_threshold).expand_as(grouped).reshape(-1)
    self_advantages = torch.where(spread_enough, normalized.reshape(-1), advantages)
    return (1 - tau) * advantages + tau * self_advantages


def _check_rows(values: torch.Tensor, valid: torch.Tensor, name: str) -> torch.Tensor:
    """Check ``values``/``valid`` are matching ``[B]`` tensors; return ``valid`` as a bool mask."""
    if values.dim() != 1 or valid.shape != values.shape:
        raise ValueError(
            f"{name} and valid must be 1-D tensors of one value per row, got {tuple(values.shape)} and "
            f"{tuple(valid.shape)}"
        )
    return valid.bool()


def _check_binary(verifier_rewards: torch.Tensor, valid: torch.Tensor) -> None:
    kept = verifier_rewards[valid]
    if not ((kept == 0) | (kept == 1)).all():
        raise DataError(
            "LaSeR needs a binary verifier reward (0 or 1) for every non-truncated completion",
            where="laser_class_weights",
            fix="train the self-reward on the verifier reward (e.g. 'math') alone, not a sum of rewards",
        )
