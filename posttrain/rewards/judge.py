"""The ``judge`` reward: a generative judge model scores each completion (LLM-as-a-judge as an RL reward).

Modes (``mode`` argument), all against the record's reference:

* ``verifier`` (default) — the :data:`~posttrain.judges.formats.TEMPLATES` ``verifier`` template with the
  record's ``reference`` answer: 1.0 for ``[[YES]]``, 0.0 for ``[[NO]]``;
* ``pointwise`` — a 1–10 score (the ``pointwise`` template), mapped linearly to [0, 1];
* ``pairwise`` — the completion against the record's reference solution (``answer_field``, default ``answer``)
  under a pairwise template, judged in both orders: the fraction of the two orders that prefer the completion
  (0, 0.5 or 1), so a judge with a position bias cannot give a reward for position alone.

A judgment without a parsable verdict raises, which the reward registry counts as an error of the sample
(scored ``on_error``; the run stops above ``max_error_rate``). Judgments are greedy by default and cached per
(mode, template, prompt, completion, reference): the same sample is never judged twice. The judge model is
loaded once per name and process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from posttrain.data import prompt_text
from posttrain.errors import ConfigError, DataError, check_choice
from posttrain.judges.formats import get_template, pairwise_prompts
from posttrain.rewards.registry import register_reward

MODES = ("verifier", "pointwise", "pairwise")
DEFAULT_TEMPLATES = {"verifier": "verifier", "pointwise": "pointwise", "pairwise": "rise"}
CACHE_SIZE = 100_000


class JudgeCache:
    """Judge engines by model name, and judgments by their full input (least recently used dropped first)."""

    def __init__(self) -> None:
        self.engines: dict[str, Any] = {}
        self.judgments: OrderedDict[tuple, float] = OrderedDict()

    def engine(self, model: str):
        if model not in self.engines:
            from posttrain.models import load_model, load_tokenizer
            from posttrain.rollout import HFEngine

            self.engines[model] = HFEngine(load_model(model).eval(), load_tokenizer(model), batch_size=8)
        return self.engines[model]


CACHE = JudgeCache()


def _check_judge_args(args: dict[str, Any]) -> None:
    mode = args.get("mode", "verifier")
    check_choice(mode, MODES, "judge reward mode", "rewards.functions[judge].args.mode")
    template = get_template(args.get("template", DEFAULT_TEMPLATES[mode]))
    wanted = {"verifier": "verifier", "pointwise": "pointwise", "pairwise": "pairwise"}[mode]
    if template.kind != wanted:
        raise ConfigError(f"judge reward mode {mode!r} needs a {wanted} template, got {template.name!r} "
                          f"({template.kind})", where="rewards.functions[judge].args.template",
                          fix=f"use the built-in {DEFAULT_TEMPLATES[mode]!r} or another {wanted} template")


@register_reward("judge", requires=("reference",), check=_check_judge_args)
def judge_reward(prompt: str, completion: str, record: dict, model: str, mode: str = "verifier",
                 template: str | None = None, answer_field: str = "answer", max_new_tokens: int = 256) -> float:
    """The judge's score of ``completion`` in [0, 1] (module docstring)."""
    template = get_template(template or DEFAULT_TEMPLATES[mode])
    question = prompt or prompt_text(record)
    reference = str(record.get(answer_field if mode == "pairwise" else "reference") or "")
    if not reference.strip():
        field = answer_field if mode == "pairwise" else "reference"
        raise DataError(f"the record has no {field!r} for the judge reward", where=record.get("_where"),
                        fix=f"give every record a {field!r}")
    key = (model, mode, template.name, template.text, question, completion, reference, max_new_tokens)
    if key in CACHE.judgments:
        CACHE.judgments.move_to_end(key)
        return CACHE.judgments[key]
    if mode == "pairwise":
        messages = list(pairwise_prompts(question, completion, reference, template))
    elif mode == "pointwise":
        messages = [template.render(question, completion)]
    else:
        messages = [template.render(question, completion, reference=reference)]
    verdicts = [template.parse(text) for text in judge_texts(model, messages, max_new_tokens)]
    if any(verdict is None for verdict in verdicts):
        raise ValueError("the judge's output has no verdict (a format failure)")
    if mode == "pairwise":  # the completion is A in the first prompt and B in the second
        score = ((verdicts[0] == "A") + (verdicts[1] == "B")) / 2
    elif mode == "pointwise":
        low, high = template.score_range
        score = (float(verdicts[0]) - low) / (high - low)
    else:
        score = 1.0 if verdicts[0] else 0.0
    CACHE.judgments[key] = score
    if len(CACHE.judgments) > CACHE_SIZE:
        CACHE.judgments.popitem(last=False)
    return score


def judge_texts(model: str, messages: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy judgments of chat prompts by the judge ``model``."""
    from posttrain.data import encode_prompts
    from posttrain.rollout import SamplingParams

    engine = CACHE.engine(model)
    prompt_ids = encode_prompts([{"prompt": m} for m in messages], engine.tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, n=1)
    return [g.text for g in engine.generate(prompt_ids, params)]
