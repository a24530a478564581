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

``verdict`` is a per-sample function; the others are reward objects that own what they load for their run (the
scalar reward model, the similarity backend, the MetaRM) and score a batch with one call of each model. The rewards
here are thin: parsing, outcome, solve score, rule reward and the MetaRM live in :mod:`posttrain.judges`
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
    ScalarRewardModel,
    metarm_calibration,
    metarm_input,
    rule_rewards,
    solve_score,
)
from posttrain.judges.metarm import MetaRM, metarm_bonus
from posttrain.judges.similarity import build_similarity
from posttrain.rewards.base import Reward, SampleReward, check_signature, rows_of
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


def s2j_reward(prompt: str, completion: str, record: dict, template: str = "s2j", judge_weight: float = 1.0,
               solve_weight: float = 1.0, combine: str = "sum", reward_model: ScalarRewardModel | None = None,
               format_penalty: float = -1.0) -> float:
    """Solve-and-judge reward of one sample (module docstring)."""
    output = parsed(completion, template)
    if not output.valid:
        return format_penalty
    judged = outcome(output, record)
    solved = solve_score(output.solve or "", record, reward_model)
    if combine == "gated":
        return judge_weight * judged * (1.0 + solve_weight * solved)
    return judge_weight * judged + solve_weight * solved


@register_reward("s2j", time_limited=False, requires=JUDGE_FIELDS, check=_check_s2j)
class S2JReward(SampleReward):
    """:func:`s2j_reward` per sample, with the run's own scalar ``reward_model`` (a path) for subjective tasks."""

    def __init__(self, reward_model: str | None = None, **args: Any):
        check_signature(s2j_reward, args, "reward 's2j'")
        scorer = None if reward_model is None else ScalarRewardModel(reward_model)
        super().__init__(s2j_reward, {**args, "reward_model": scorer})


# --------------------------------------------------------------------------------- critique similarity


@register_reward("critique_similarity", time_limited=False, requires=JUDGE_FIELDS, check=_check_template)
class CritiqueSimilarityReward(Reward):
    """``o + w·q`` with a critique, ``o`` without one, ``format_penalty`` on a format error; the batch's
    critiques compared in one call of the run's similarity backend."""

    def __init__(self, template: str = "grm", backend: str = "lexical", threshold: float | None = None,
                 weight: float = 0.5, backend_args: dict | None = None, format_penalty: float = -1.0):
        self.template, self.threshold, self.weight, self.format_penalty = template, threshold, weight, format_penalty
        self.similarity = build_similarity(backend, **(backend_args or {}))  # fails early if it cannot load

    def __call__(self, prompts, completions, **columns):
        records = rows_of(columns, len(completions))
        outputs = [parsed(completion, self.template) for completion in completions]
        values: list[float] = [self.format_penalty] * len(completions)
        critiqued = [i for i, (o, r) in enumerate(zip(outputs, records, strict=True)) if o.valid and r.get("critique")]
        others = [i for i, (o, r) in enumerate(zip(outputs, records, strict=True)) if o.valid and not r.get("critique")]
        rules = rule_rewards([outputs[i] for i in critiqued], [records[i] for i in critiqued], self.similarity,
                             self.threshold, self.weight)
        for index, value in zip(critiqued, rules, strict=True):
            values[index] = value
        for index, value in zip(others, self.uncritiqued([outputs[i] for i in others], [records[i] for i in others]),
                                strict=True):
            values[index] = value
        return values

    def uncritiqued(self, outputs: Sequence, records: Sequence[dict]) -> list[float]:
        """The reward of well-formed outputs on records without a critique: the outcome ``o``."""
        return [outcome(output, record) for output, record in zip(outputs, records, strict=True)]


# ---------------------------------------------------------------------------------------------- MetaRM


def _check_metarm(args: dict[str, Any]) -> None:
    _check_template(args)
    if not args.get("model"):
        raise ConfigError("the metarm reward needs args.model: the directory of a trained MetaRM",
                          where="rewards.functions[metarm].args.model",
                          fix="cold-start one with `posttrain judge metarm-data` and `posttrain train` "
                          "(method: reward_model, reward_model.objective: regression)")


@register_reward("metarm", time_limited=False, requires=JUDGE_FIELDS, check=_check_metarm)
class MetaRMReward(CritiqueSimilarityReward):
    """The rule reward with a critique; ``o·(1 + w·max(0, s − 1))`` without one, the batch's MetaRM scores in one
    call (module docstring). The run's own MetaRM, trained online after each batch and checkpointed."""

    def __init__(self, model: str | None = None, template: str = "grm", backend: str = "lexical",
                 threshold: float | None = None, weight: float = 0.5, backend_args: dict | None = None,
                 online: bool = True, lr: float = 5e-6, format_penalty: float = -1.0):
        super().__init__(template, backend, threshold, weight, backend_args, format_penalty)
        self.path, self.online, self.lr = model, online, lr
        self._metarm: MetaRM | None = None

    @property
    def metarm(self) -> MetaRM:
        """The MetaRM, loaded on first use unless :meth:`prepare` loaded it."""
        if self._metarm is None:
            self._metarm = MetaRM.load(self.path, online_lr=self.lr)
        return self._metarm

    def uncritiqued(self, outputs, records):
        judged = [outcome(output, record) for output, record in zip(outputs, records, strict=True)]
        right = [i for i, value in enumerate(judged) if value != 0.0]
        if right:
            scores = self.metarm.score([metarm_input(outputs[i], records[i]) for i in right])
            for index, score in zip(right, scores, strict=True):
                judged[index] *= 1.0 + self.weight * metarm_bonus(score)
        return judged

    def prepare(self, tokenizer) -> None:
        """Load the MetaRM, refusing one built on another base model than the policy's."""
        self._metarm = MetaRM.load(self.path, policy_tokenizer=tokenizer, online_lr=self.lr)

    def after_batch(self, prompts, completions, records, values) -> dict[str, float]:
        """Log the MetaRM's calibration on this batch's critique-bearing rollouts, then (``online``) train on them;
        logged as ``<label>/<key>``, e.g. ``metarm/pearson``."""
        return metarm_calibration(completions, records, values, self.metarm, self.template, self.online)

    def save_state(self, directory: Path) -> None:
        """The online MetaRM's weights and optimizer into ``directory/metarm.pt``."""
        if self.online:
            self.metarm.save(Path(directory))

    def load_state(self, directory: Path) -> None:
        """Restore the online MetaRM from a checkpoint (a resumed run continues exactly)."""
        if self.online and Path(directory).is_dir():
            self.metarm.restore(Path(directory))
