"""A judge model named by the user: its greedy judgments, and its scores of responses in [0, 1].

Modes of :meth:`JudgeModel.scores` (each a template kind), all against a reference:

* ``verifier`` (default) — the :data:`~posttrain.judges.formats.TEMPLATES` ``verifier`` template with the
  reference answer: 1.0 for ``[[YES]]``, 0.0 for ``[[NO]]``;
* ``pointwise`` — a 1–10 score (the ``pointwise`` template), mapped linearly to [0, 1];
* ``pairwise`` — the response against the reference solution under a pairwise template, judged in both orders:
  the fraction of the two orders that prefer the response (0, 0.5 or 1), so a judge with a position bias cannot
  give a score for position alone.

A judgment without a parsable verdict is a ``ValueError`` in that response's place (the reward registry counts
it as an error of the sample). A :class:`JudgeModel` is one judge of one user (a run's reward, an evaluation): it
loads its engine on first use and caches its greedy judgments per (mode, template, question, response, reference,
length limit), so the same response is never judged twice; :meth:`JudgeModel.scores` judges a whole batch in one
generation call. Nothing is kept per process: two runs have two judges.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence

from posttrain.data import encode_prompts
from posttrain.judges.formats import JudgeTemplate
from posttrain.judges.pairs import pairwise_prompts
from posttrain.rollout import SamplingParams
from posttrain.rollout.engines import tool_engine

MODES = ("verifier", "pointwise", "pairwise")
DEFAULT_TEMPLATES = {"verifier": "verifier", "pointwise": "pointwise", "pairwise": "rise"}
CACHE_SIZE = 100_000


def load_judge_engine(model: str, kind: str = "hf"):
    """A generation engine over the judge ``model`` (a path or hub name): ``hf``, ``vllm`` or ``auto``
    (:func:`posttrain.rollout.engines.tool_engine`)."""
    return tool_engine(model, kind, batch_size=8, setting="the judge reward's engine")


def unit_score(template: JudgeTemplate, score: float) -> float:
    """A pointwise score mapped linearly from the template's ``score_range`` to [0, 1]."""
    low, high = template.score_range
    return (float(score) - low) / (high - low)


def judge_prompts(mode: str, template: JudgeTemplate, question: str, response: str, reference: str) -> list:
    """The chat prompts of one judgment: two (both orders) for ``pairwise``, else one."""
    if mode == "pairwise":
        return list(pairwise_prompts(question, response, reference, template))
    if mode == "pointwise":
        return [template.render(question, response)]
    return [template.render(question, response, reference=reference)]


def verdict_score(mode: str, template: JudgeTemplate, texts: Sequence[str]) -> float:
    """The score of one judgment's outputs (module docstring); a ValueError when one has no verdict."""
    verdicts = [template.parse(text) for text in texts]
    if any(verdict is None for verdict in verdicts):
        raise ValueError("the judge's output has no verdict (a format failure)")
    if mode == "pairwise":  # the response is A in the first prompt and B in the second
        return ((verdicts[0] == "A") + (verdicts[1] == "B")) / 2
    if mode == "pointwise":
        return unit_score(template, verdicts[0])
    return 1.0 if verdicts[0] else 0.0


class JudgeModel:
    """A judge model by name: its engine (loaded on first use) and its judgments (least recently used dropped
    first beyond ``cache_size``), keyed by a SHA-256 digest of their full input."""

    def __init__(self, model: str, cache_size: int = CACHE_SIZE, engine: str = "hf"):
        self.model, self.cache_size, self.engine_kind = model, cache_size, engine
        self._engine = None
        self.judgments: OrderedDict[str, float] = OrderedDict()

    @property
    def engine(self):
        """The judge's generation engine (``hf``, ``vllm`` or ``auto``: :func:`posttrain.rollout.engines.tool_engine`),
        loaded on first use."""
        if self._engine is None:
            self._engine = load_judge_engine(self.model, self.engine_kind)
        return self._engine

    def texts(self, messages: Sequence[list[dict]], max_new_tokens: int) -> list[str]:
        """Greedy judgments of chat prompts, all in one generation call."""
        engine = self.engine
        prompt_ids = encode_prompts([{"prompt": m} for m in messages], engine.tokenizer)
        params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, n=1)
        return [g.text for g in engine.generate(prompt_ids, params)]

    def scores(self, mode: str, template: JudgeTemplate, questions: Sequence[str], responses: Sequence[str],
               references: Sequence[str], max_new_tokens: int = 256) -> list[float | ValueError]:
        """The judge's score in [0, 1] of every response under ``mode`` (module docstring), or a ValueError in
        the place of a judgment without a verdict; the uncached judgments of the batch in one generation call."""
        keys = [self._key(mode, template, q, r, ref, max_new_tokens)
                for q, r, ref in zip(questions, responses, references, strict=True)]
        todo = {key: index for index, key in enumerate(keys) if key not in self.judgments}  # first occurrence
        messages = [judge_prompts(mode, template, questions[i], responses[i], references[i]) for i in todo.values()]
        texts = iter(self.texts([m for prompts in messages for m in prompts], max_new_tokens) if todo else [])
        fresh: dict[str, float | ValueError] = {}
        for key, prompts in zip(todo, messages, strict=True):
            try:
                fresh[key] = verdict_score(mode, template, [next(texts) for _ in prompts])
            except ValueError as error:
                fresh[key] = error
        for key, value in fresh.items():
            if not isinstance(value, ValueError):
                self._remember(key, value)
        return [fresh[key] if key in fresh else self._recall(key) for key in keys]

    @staticmethod
    def _key(mode: str, template: JudgeTemplate, question: str, response: str, reference: str,
             max_new_tokens: int) -> str:
        parts = [mode, template.name, template.text, question, response, reference, max_new_tokens]
        text = json.dumps(parts, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _recall(self, key: str) -> float:
        self.judgments.move_to_end(key)
        return self.judgments[key]

    def _remember(self, key: str, score: float) -> None:
        self.judgments[key] = score
        if len(self.judgments) > self.cache_size:
            self.judgments.popitem(last=False)

    def state_dict(self) -> dict:
        """The cached judgments (digests and scores, oldest first): what a resumed run needs not to judge again."""
        return {"model": self.model, "judgments": list(self.judgments.items())}

    def load_state_dict(self, state: dict) -> None:
        self.judgments = OrderedDict((str(key), float(score)) for key, score in state["judgments"])
