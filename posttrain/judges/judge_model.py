"""A judge model named by the user: its greedy judgments, and its score of one response in [0, 1].

Modes of :func:`judge_score` (each a template kind), all against a reference:

* ``verifier`` (default) — the :data:`~posttrain.judges.formats.TEMPLATES` ``verifier`` template with the
  reference answer: 1.0 for ``[[YES]]``, 0.0 for ``[[NO]]``;
* ``pointwise`` — a 1–10 score (the ``pointwise`` template), mapped linearly to [0, 1];
* ``pairwise`` — the response against the reference solution under a pairwise template, judged in both orders:
  the fraction of the two orders that prefer the response (0, 0.5 or 1), so a judge with a position bias cannot
  give a score for position alone.

A judgment without a parsable verdict raises ``ValueError`` (the reward registry counts it as an error of the
sample). Judgments are greedy and cached per (model, mode, template, question, response, reference): the same
response is never judged twice. Each judge model is loaded once per name and process (:data:`CACHE`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from posttrain.data import encode_prompts
from posttrain.judges.formats import JudgeTemplate
from posttrain.judges.pairs import pairwise_prompts
from posttrain.models import load_model, load_tokenizer
from posttrain.rollout import HFEngine, SamplingParams

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
            self.engines[model] = HFEngine(load_model(model).eval(), load_tokenizer(model), batch_size=8)
        return self.engines[model]


CACHE = JudgeCache()


def judge_texts(model: str, messages: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy judgments of chat prompts by the judge ``model``."""
    engine = CACHE.engine(model)
    prompt_ids = encode_prompts([{"prompt": m} for m in messages], engine.tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, n=1)
    return [g.text for g in engine.generate(prompt_ids, params)]


def unit_score(template: JudgeTemplate, score: float) -> float:
    """A pointwise score mapped linearly from the template's ``score_range`` to [0, 1]."""
    low, high = template.score_range
    return (float(score) - low) / (high - low)


def judge_score(model: str, mode: str, template: JudgeTemplate, question: str, response: str, reference: str,
                max_new_tokens: int = 256) -> float:
    """The judge's score of ``response`` in [0, 1] under ``mode`` (module docstring)."""
    key = (model, mode, template.name, template.text, question, response, reference, max_new_tokens)
    if key in CACHE.judgments:
        CACHE.judgments.move_to_end(key)
        return CACHE.judgments[key]
    if mode == "pairwise":
        messages = list(pairwise_prompts(question, response, reference, template))
    elif mode == "pointwise":
        messages = [template.render(question, response)]
    else:
        messages = [template.render(question, response, reference=reference)]
    verdicts = [template.parse(text) for text in judge_texts(model, messages, max_new_tokens)]
    if any(verdict is None for verdict in verdicts):
        raise ValueError("the judge's output has no verdict (a format failure)")
    if mode == "pairwise":  # the response is A in the first prompt and B in the second
        score = ((verdicts[0] == "A") + (verdicts[1] == "B")) / 2
    elif mode == "pointwise":
        score = unit_score(template, verdicts[0])
    else:
        score = 1.0 if verdicts[0] else 0.0
    CACHE.judgments[key] = score
    if len(CACHE.judgments) > CACHE_SIZE:
        CACHE.judgments.popitem(last=False)
    return score
