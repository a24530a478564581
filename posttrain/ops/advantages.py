"""Group-relative advantages for the GRPO family.

Rewards are one value per completion; a group is ``group_size`` consecutive rows (the G samples of
one prompt). With ``b_i`` the baseline and ``s_i`` the scale,

    A_i = (r_i − b_i) / (s_i + eps)        (``A_i = r_i − b_i`` when ``scale="none"``)

* ``baseline="mean"`` — ``b_i`` = mean of the group (GRPO, Shao et al. 2024, arXiv 2402.03300, §4.1.2).
* ``baseline="rloo"`` — ``b_i`` = mean of the *other* G − 1 rewards of the group (RLOO, Ahmadian et al.
  2024, arXiv 2402.14740, Eq. 5), which equals ``G/(G−1)·(r_i − mean_g)``.
* ``baseline="none"`` — ``b_i = 0`` (REINFORCE++, Hu et al. 2025, arXiv 2501.03262: the baseline is left to the
  global whitening, :func:`whiten_advantages`).
* ``scale="group"`` — ``s_i`` = standard deviation of the rewards of i's group (GRPO).
* ``scale="batch"`` — ``s_i`` = standard deviation of all rewards in the batch (Hu et al. 2025,
  REINFORCE++ / "batch" scaling in TRL).
* ``scale="none"`` — no division (Dr. GRPO, Liu et al. 2025, arXiv 2503.20783, §3.1).

The standard deviation is the unbiased one (Bessel's correction, ÷ (n − 1)) and ``eps = 1e-4`` is added
to it, both as TRL 1.16 ``GRPOTrainer._generate_and_score_completions`` (``trl.trainer.utils.nanstd``).
With ``baseline="mean"`` the result equals TRL's advantages for every scale.

Token-level advantages (REINFORCE++, Hu et al. 2025, arXiv 2501.03262, Eq. 8–10; OpenRLHF's ``compute_reward`` and
``get_cumulative_returns``, verl's ``apply_kl_penalty``):

* :func:`token_rewards` — the KL to the reference as a reward: each response token t of row i earns
  ``−β·KL_{i,t}`` and the last one also the row's score ``R_i``, ``r_{i,t} = −β·m_{i,t}·KL_{i,t} + [t = last]·R_i``
  (Ziegler et al. 2019, arXiv 1909.08593, eq. 2; Ouyang et al. 2022 §3.5; ``KL_t = log π_old − log π_ref`` is the
  ``k1`` estimate of :func:`posttrain.ops.kl_estimate`). PPO turns them into GAE advantages
  (:func:`posttrain.ops.gae_advantages`).
* :func:`kl_penalized_advantages` — without a critic, the advantage of token t is its return with γ = 1 from the
  row's (baselined, scaled) reward ``A_i``: ``A_{i,t} = A_i − β·Σ_{s≥t} m_{i,s}·KL_{i,s}``.
* :func:`whiten_advantages` — global whitening: ``(A − μ) / σ`` with μ and σ² the mean and (population) variance
  of the advantages over every response token of the step, σ² floored at 1e-8 (OpenRLHF; the statistics of several
  micro-batches and processes are summed first: :func:`token_moments`).

:func:`zero_spread_groups` marks the groups whose rewards are all equal (DAPO's dynamic sampling drops them,
Yu et al. 2025, arXiv 2503.14476, §3.2).
"""

from __future__ import annotations

import torch

from posttrain.errors import DataError
from posttrain.ops.checks import check_choice

ADVANTAGE_SCALES = ("group", "batch", "none")
ADVANTAGE_BASELINES = ("mean", "rloo", "none")
WHITEN_EPS = 1e-8


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "group",
    baseline: str = "mean",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Advantages ``(r_i − b_i) / (s_i + eps)`` for rewards ``[N]`` in consecutive groups of ``group_size``.

    Returns a tensor of shape ``[N]`` with the dtype of ``rewards`` (integer rewards become float32).
    Raises :class:`ValueError` for an unknown ``scale``/``baseline``, for ``group_size < 2`` with
    ``scale="group"`` or ``baseline="rloo"`` (a group of one has no spread and no "others"), and for
    ``N`` not a multiple of ``group_size``; :class:`DataError` for non-finite rewards.
    """
    _check_arguments(rewards, group_size, scale, baseline)
    rewards = rewards.float() if not rewards.is_floating_point() else rewards
    grouped = rewards.view(-1, group_size)
    group_mean = grouped.mean(dim=1, keepdim=True)
    if baseline == "mean":
        centered = grouped - group_mean
    elif baseline == "none":
        centered = grouped
    else:
        leave_one_out_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
        centered = grouped - leave_one_out_mean
    centered = centered.reshape(-1)
    if scale == "none":
        return centered
    if scale == "group":
        spread = grouped.std(dim=1, correction=1).repeat_interleave(group_size)
    else:
        spread = rewards.std(correction=1) if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    return centered / (spread + eps)


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards ``r_t = −β·m_t·KL_t + [t = last response token]·R`` (the module docstring).

    ``scores`` is ``[B]`` (each sequence's reward ``R``), ``mask`` and ``kl`` are ``[B, T]``. A row without response
    tokens gets no reward. Returns ``[B, T]``, 0 outside ``mask``.
    """
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected [{mask.shape[0]}] (one per row)")
    if kl_coef and kl is None:
        raise ValueError(f"a KL coefficient {kl_coef} in the reward needs the per-token KL")
    mask = mask.to(torch.float32 if not scores.is_floating_point() else scores.dtype)
    rewards = torch.zeros_like(mask)
    if kl_coef:  # tokens outside the mask carry no penalty, whatever their KL value
        rewards = rewards - kl_coef * torch.where(mask.bool(), kl.detach().to(mask.dtype), 0.0)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values  # -1: a row without response tokens
    rows = torch.nonzero(last >= 0).squeeze(1)
    rewards[rows, last[rows]] += scores[rows].to(mask.dtype)
    return rewards


def kl_penalized_advantages(advantages: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                            beta: float) -> torch.Tensor:
    """``A_{i,t} = A_i − β·Σ_{s≥t} m_{i,s}·KL_{i,s}`` (the module docstring): ``[B]`` row advantages, ``[B, T]``
    per-token KL estimates and response mask in, ``[B, T]`` token advantages out (detached): the returns of the
    KL penalties of :func:`token_rewards`, plus the row's advantage."""
    if advantages.dim() != 1 or kl.shape != mask.shape or kl.shape[:1] != advantages.shape:
        raise ValueError(f"expected advantages [B] and kl, mask [B, T]; got {tuple(advantages.shape)}, "
                         f"{tuple(kl.shape)} and {tuple(mask.shape)}")
    penalties = token_rewards(torch.zeros(kl.shape[0], dtype=kl.dtype, device=kl.device), mask, kl, beta)
    return advantages.detach().to(kl.dtype).unsqueeze(1) + penalties.flip(-1).cumsum(-1).flip(-1)


def token_moments(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[Σ m, Σ m·A, Σ m·A²]`` in float64 over the response tokens ``mask`` (``[B, T]``); ``[B]`` advantages count
    once per token of their row. Summed over micro-batches and processes, they give :func:`whiten_advantages` the
    statistics of the whole step."""
    values = advantages.detach().double()
    if values.dim() == 1:
        values = values.unsqueeze(1)
    weights = mask.double()
    values = torch.where(mask.bool(), values.expand_as(weights), torch.zeros((), dtype=torch.float64,
                                                                             device=values.device))
    return torch.stack([weights.sum(), (weights * values).sum(), (weights * values.square()).sum()])


def whiten_advantages(advantages: torch.Tensor, moments: torch.Tensor, eps: float = WHITEN_EPS) -> torch.Tensor:
    """``(A − μ) / sqrt(max(σ², eps))`` with ``μ = Σ m·A / Σ m`` and ``σ² = Σ m·A² / Σ m − μ²`` from ``moments``
    (:func:`token_moments`, summed over the step); the shape and dtype of ``advantages`` are kept."""
    count, total, squares = (float(v) for v in moments)
    if count <= 0:
        return advantages
    mean = total / count
    variance = max(squares / count - mean * mean, eps)
    return (advantages - mean) / variance**0.5


def zero_spread_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[N / G]`` booleans: the groups whose rewards are all equal (standard deviation 0 up to ``torch.isclose``,
    TRL 1.16's ``frac_reward_zero_std`` test); their advantages are 0 and DAPO's dynamic sampling drops them."""
    _check_arguments(rewards, group_size, "none", "mean")
    grouped = rewards.double().view(-1, group_size)
    spread = grouped.std(dim=1, correction=1) if group_size > 1 else torch.zeros(grouped.shape[0], dtype=torch.float64)
    return torch.isclose(spread, torch.zeros_like(spread))


def _check_arguments(rewards: torch.Tensor, group_size: int, scale: str, baseline: str) -> None:
    check_choice(scale, ADVANTAGE_SCALES, "advantage scale")
    check_choice(baseline, ADVANTAGE_BASELINES, "advantage baseline")
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be a 1-D tensor (one reward per completion), got shape {tuple(rewards.shape)}"
        )
    if group_size < 1:
        raise ValueError(f"group size must be at least 1, got {group_size}; "
                         "set the number of samples per prompt (G) to 2 or more")
    if group_size < 2 and (scale == "group" or baseline == "rloo"):
        need = "group-std scaling" if scale == "group" else "the RLOO baseline"
        raise ValueError(f"{need} needs at least 2 samples per prompt, got G = {group_size}; "
                         "use 2 or more samples per prompt (G), or scale 'batch'/'none' with the mean baseline")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}; "
                         "pass G consecutive rewards for every prompt (the batch size must be a multiple of G)")
    if not torch.isfinite(rewards).all():
        raise DataError(
            "rewards contain NaN or infinite values",
            where="group_advantages",
            fix="make every reward function return a finite number (the reward registry scores failures)",
        )
