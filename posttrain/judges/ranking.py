"""Agreement between two rankings of the same responses: Kendall's τ and CREAM's consistency rate.

CREAM (Wang et al., ICLR 2025, arXiv 2410.12735; ``cal_consistency.py`` of Raibows/CREAM) ranks one prompt's N
sampled responses twice — with the current iteration's reward and with the previous iteration's — and turns
Kendall's τ between the two rankings into a consistency rate ``C = (τ + 1) / 2`` in [0, 1]. The rate weights the
judged order's DPO loss by C and the reversed pair's by 1 − C (per-pair label smoothing ε = 1 − C,
:func:`posttrain.ops.dpo_loss`). CREAM offers it per prompt (``consistency_dyn``) or as the mean over the data
set (``consistency_avg``, the variant of its training example); a prompt whose τ is undefined takes the data
set's mean, as CREAM's ``data.py`` does.

Ties: CREAM ranks with ``scipy.stats.rankdata(method='ordinal')``, which breaks a tie by position — two equal
scores then count as agreeing or disagreeing by chance. Judge scores tie often (a 1–10 scale, win counts), so
:func:`kendall_tau` is τ-b, in which a tie in either ranking makes a pair neither concordant nor discordant and
the denominator corrects for the ties (Kendall 1945).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONSISTENCY_SCOPES = ("dataset", "prompt")


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> float | None:
    """Kendall's τ-b of two score lists over the same items.

    Over all item pairs ``i < j``: concordant when both lists order them the same way, discordant when
    opposite, and tied in one list or both otherwise. With ``n_c`` concordant, ``n_d`` discordant, ``t_1``
    pairs tied in ``first`` only and ``t_2`` tied in ``second`` only:
    ``τ_b = (n_c − n_d) / √((n_c + n_d + t_1)·(n_c + n_d + t_2))`` in [−1, 1] (without ties, τ_a =
    ``(n_c − n_d) / (n(n−1)/2)``). None when undefined: fewer than two items, or every pair tied in one list.
    """
    if len(first) != len(second):
        raise ValueError(f"Kendall's tau needs two lists over the same items, got {len(first)} and {len(second)} "
                         "scores; score every item in both")
    concordant = discordant = tied_first = tied_second = 0
    for i in range(len(first)):
        for j in range(i + 1, len(first)):
            a = (first[i] > first[j]) - (first[i] < first[j])
            b = (second[i] > second[j]) - (second[i] < second[j])
            if a and b:
                concordant += a == b
                discordant += a != b
            elif a:
                tied_second += 1
            elif b:
                tied_first += 1
    untied = concordant + discordant
    denominator = math.sqrt((untied + tied_first) * (untied + tied_second))
    return (concordant - discordant) / denominator if denominator else None


def consistency_rate(tau: float) -> float:
    """CREAM's consistency rate ``C = (τ + 1) / 2``: 1 for identical rankings, 0.5 for unrelated, 0 for reversed."""
    return (tau + 1) / 2


def consistency_rates(taus: Sequence[float | None], scope: str = "dataset") -> list[float]:
    """One C per prompt from its τ: the prompt's own (``prompt``; an undefined τ takes the data set's mean C), or
    the mean C over the prompts with a defined τ for every prompt (``dataset``). With no defined τ at all, C = 1
    (nothing contradicts the judge: plain DPO)."""
    if scope not in CONSISTENCY_SCOPES:
        raise ValueError(f"consistency scope {scope!r} is not one of {', '.join(CONSISTENCY_SCOPES)}")
    rates = [None if tau is None else consistency_rate(tau) for tau in taus]
    defined = [rate for rate in rates if rate is not None]
    mean = sum(defined) / len(defined) if defined else 1.0
    if scope == "dataset":
        return [mean] * len(rates)
    return [mean if rate is None else rate for rate in rates]
