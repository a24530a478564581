"""The ``judge`` reward: a generative judge model scores each completion (LLM-as-a-judge as an RL reward).

A thin reward over :func:`posttrain.judges.judge_model.judge_score`, whose modes it takes (``mode`` argument):
``verifier`` (default; the record's ``reference`` answer), ``pointwise`` (a 1–10 score mapped to [0, 1]) or
``pairwise`` (the completion against the record's reference solution, ``answer_field``, default ``answer``, in
both orders). A judgment without a parsable verdict raises, which the reward registry counts as an error of the
sample (scored ``on_error``; the run stops above ``max_error_rate``). Judgments are greedy and cached.
"""

from __future__ import annotations

from typing import Any

from posttrain.data import prompt_text
from posttrain.errors import ConfigError, DataError, check_choice
from posttrain.judges.formats import get_template
from posttrain.judges.judge_model import DEFAULT_TEMPLATES, MODES, judge_score
from posttrain.rewards.registry import register_reward


def _check_judge_args(args: dict[str, Any]) -> None:
    mode = args.get("mode", "verifier")
    check_choice(mode, MODES, "judge reward mode", "rewards.functions[judge].args.mode")
    template = get_template(args.get("template", DEFAULT_TEMPLATES[mode]))
    if template.kind != mode:
        raise ConfigError(f"judge reward mode {mode!r} needs a {mode} template, got {template.name!r} "
                          f"({template.kind})", where="rewards.functions[judge].args.template",
                          fix=f"use the built-in {DEFAULT_TEMPLATES[mode]!r} or another {mode} template")


@register_reward("judge", time_limited=False, requires=("reference",), check=_check_judge_args)
def judge_reward(prompt: str, completion: str, record: dict, model: str, mode: str = "verifier",
                 template: str | None = None, answer_field: str = "answer", max_new_tokens: int = 256) -> float:
    """The judge's score of ``completion`` in [0, 1] (module docstring)."""
    field = answer_field if mode == "pairwise" else "reference"
    reference = str(record.get(field) or "")
    if not reference.strip():
        raise DataError(f"the record has no {field!r} for the judge reward", where=record.get("_where"),
                        fix=f"give every record a {field!r}")
    return judge_score(model, mode, get_template(template or DEFAULT_TEMPLATES[mode]), prompt or prompt_text(record),
                       completion, reference, max_new_tokens)
