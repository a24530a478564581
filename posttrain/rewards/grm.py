"""Rewards for generative reward models trained with RL on judge tasks (:mod:`posttrain.judges.tasks`).

Each prompt record carries ``gold`` (the right verdict for its order), ``response_a``/``response_b``, and
optionally ``reference`` and ``critique``. An output is parsed by :func:`posttrain.judges.grm.parse_grm` (the
``s2j`` template also needs its ``<solve>`` section); ``o = 1[choice == gold]``.

``verdict`` — the outcome-only reward: ``o``, or ``format_penalty`` (−1) for a format error (RM-NLHF's
baseline, Wang et al. 2026, arXiv 2601.07349; methods.md §4.3).

``s2j`` — solve-and-judge (Sun et al. 2025, arXiv 2509.22099; methods.md §5.2)::

    sum:    R = w_j·o + w_s·s          gated:  R = w_j·o·(1 + w_s·s)

with ``s`` = 1 when the ``<solve>`` section's final answer matches the record's ``reference``
(:func:`posttrain.grading.grade`, exact rationals or math-verify), and on subjective records
(no reference) ``s = 1[RM(q, solve) ≥ RM(q, winning response)]`` under a scalar ``reward_model``. ``w_j = 0``
is the solve-only ablation.

``critique_similarity`` — RM-NLHF's process reward (methods.md §4.3)::

    R = o + w·q,   q = 1[sim(generated critique, record critique) ≥ threshold]  (only when o = 1)

on records with a critique, ``R = o`` on the others; ``sim`` is a :mod:`posttrain.judges.similarity` backend
(``lexical``, ``embedding`` or ``llm``), ``w = 0.5`` as the paper's run script.

``metarm`` — the same rule on records with a critique; on records without one, the MetaRM's prediction of that
rule reward stands in for the similarity (methods.md §4.3, §4.5)::

    R = o·(1 + w·max(0, s_MetaRM − 1))

With ``online: true`` the MetaRM takes one MSE pass after every batch over that batch's format-valid rollouts of
critique-bearing records and their rule rewards (logged first: its Pearson correlation with those rule rewards,
which it has not yet trained on), and its weights and optimizer are saved in every checkpoint.

The rewards here are thin: parsing, outcome, solve score, rule reward and the MetaRM live in :mod:`posttrain.judges`
(:mod:`~posttrain.judges.grm`, :mod:`~posttrain.judges.grm_scores`, :mod:`~posttrain.judges.metarm`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError, check_choice
from posttrain.judges.grm import GRM_TEMPLATES, outcome, parsed
from posttrain.judges.grm_scores import (
    load_metarm,
    metarm_calibration,
    metarm_input,
    metarm_model,
    rule_reward,
    similarity_backend,
    solve_score,
)
from posttrain.judges.metarm import metarm_bonus
from posttrain.rewards.registry import register_reward

COMBINE = ("sum", "gated")
JUDGE_FIELDS = ("gold",)


def _check_template(args: dict[str, Any]) -> None:
    check_choice(args.get("template", "grm"), GRM_TEMPLATES, "GRM reward template", "rewards.functions[].args")


# ---------------------------------------------------------------------------------------------- verdict


@register_reward("verdict", requires=JUDGE_FIELDS, check=_check_template)
def verdict_reward(prompt: str, completion: str, record: dict, template: str = "grm",
                   format_penalty: float = -1.0) -> float:
    """Outcome-only: ``o``, or ``format_penalty`` for a format error (module docstring)."""
    output = parsed(completion, template)
    return outcome(output, record) if output.valid else format_penalty


# ------------------------------------------------------------------------------------------------- s2j


def _check_s2j(args: dict[str, Any]) -> None:
    _check_template({"template": args.get("template", "s2j")})
    check_choice(args.get("combine", "sum"), COMBINE, "s2j combine", "rewards.functions[s2j].args.combine")
    for name in ("judge_weight", "solve_weight"):
        value = args.get(name, 1.0)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"s2j {name} must be a finite number >= 0, got {value!r}",
                              where=f"rewards.functions[s2j].args.{name}", fix="give e.g. 1.0")


@register_reward("s2j", time_limited=False, requires=JUDGE_FIELDS, check=_check_s2j)
def s2j_reward(prompt: str, completion: str, record: dict, template: str = "s2j", judge_weight: float = 1.0,
               solve_weight: float = 1.0, combine: str = "sum", reward_model: str | None = None,
               format_penalty: float = -1.0) -> float:
    """Solve-and-judge reward (module docstring)."""
    output = parsed(completion, template)
    if not output.valid:
        return format_penalty
    judged = outcome(output, record)
    solved = solve_score(output.solve or "", record, reward_model)
    if combine == "gated":
        return judge_weight * judged * (1.0 + solve_weight * solved)
    return judge_weight * judged + solve_weight * solved


# --------------------------------------------------------------------------------- critique similarity


def _check_similarity(args: dict[str, Any]) -> None:
    _check_template(args)
    similarity_backend(args.get("backend", "lexical"), args.get("backend_args"))  # fails early if it cannot load


@register_reward("critique_similarity", time_limited=False, requires=JUDGE_FIELDS, check=_check_similarity)
def critique_similarity_reward(prompt: str, completion: str, record: dict, template: str = "grm",
                               backend: str = "lexical", threshold: float | None = None,
                               weight: float = 0.5, backend_args: dict | None = None,
                               format_penalty: float = -1.0) -> float:
    """``o + w·q`` with a critique, ``o`` without one, ``format_penalty`` on a format error."""
    output = parsed(completion, template)
    if not output.valid:
        return format_penalty
    if not record.get("critique"):
        return outcome(output, record)
    return rule_reward(output, record, backend, threshold, backend_args, weight)


# ---------------------------------------------------------------------------------------------- MetaRM


def _check_metarm(args: dict[str, Any]) -> None:
    _check_similarity(args)
    if not args.get("model"):
        raise ConfigError("the metarm reward needs args.model: the directory of a trained MetaRM",
                          where="rewards.functions[metarm].args.model",
                          fix="cold-start one with `posttrain judge metarm-data` and `posttrain train` "
                          "(method: reward_model, reward_model.objective: regression)")


def metarm_reward(prompt: str, completion: str, record: dict, model: str, template: str = "grm",
                  backend: str = "lexical", threshold: float | None = None, weight: float = 0.5,
                  backend_args: dict | None = None, online: bool = True, lr: float = 5e-6,
                  format_penalty: float = -1.0) -> float:
    """The rule reward with a critique; ``o·(1 + w·max(0, s − 1))`` without one (module docstring)."""
    output = parsed(completion, template)
    if not output.valid:
        return format_penalty
    if record.get("critique"):
        return rule_reward(output, record, backend, threshold, backend_args, weight)
    judged = outcome(output, record)
    if judged == 0.0:
        return 0.0
    score = metarm_model(model, lr).score([metarm_input(output, record)])[0]
    return judged * (1.0 + weight * metarm_bonus(score))


def metarm_after_batch(prompts: Sequence[str], completions: Sequence[str], records: Sequence[dict],
                       values: Sequence[float], *, model: str, template: str = "grm", online: bool = True,
                       lr: float = 5e-6, **_: Any) -> dict[str, float]:
    """Log the MetaRM's calibration on this batch's critique-bearing rollouts, then (``online``) train on them;
    logged as ``<label>/<key>``, e.g. ``metarm/pearson``."""
    return metarm_calibration(completions, records, values, model, template, online, lr)


def metarm_prepare(tokenizer, *, model: str, lr: float = 5e-6, **_: Any) -> None:
    """Load the MetaRM once, refusing one built on another base model than the policy's."""
    load_metarm(model, tokenizer, lr)


def metarm_save(directory: Path, *, model: str, lr: float = 5e-6, online: bool = True, **_: Any) -> None:
    """Save the online MetaRM's weights and optimizer into a checkpoint directory."""
    if online:
        metarm_model(model, lr).save(Path(directory))


def metarm_load(directory: Path, *, model: str, lr: float = 5e-6, online: bool = True, **_: Any) -> None:
    """Restore the online MetaRM from a checkpoint directory (a resumed run continues exactly)."""
    if online and Path(directory).is_dir():
        metarm_model(model, lr).restore(Path(directory))


register_reward("metarm", time_limited=False, requires=JUDGE_FIELDS, check=_check_metarm, after_batch=metarm_after_batch,
                prepare=metarm_prepare, save_state=metarm_save, load_state=metarm_load)(metarm_reward)
