"""A model judging its own sampled responses: the scores the self-rewarding loop ranks them by.

Every function takes one prompt's N responses as a list and returns one score per response (None where the
response has none), so rankings line up across judges and signals.

``pointwise`` (Yuan et al. 2024, "Self-Rewarding Language Models", arXiv 2401.10020)
    each response judged alone with a pointwise template (default ``pointwise``: a 1–10 score in ``[[ ]]``),
    greedily; a judgment without a score is a format failure and its response has no score. With a ``prefill``
    (e.g. ``"Score: [["``) the judgment is made to start with that text — placed after the chat template's
    assistant header, read back as part of the judgment — so a small model that writes no ``[[N]]`` on its own
    (SmolLM2-135M: all of 12 judgments without a score) gives a direct score instead of an analysis.
``expected`` (:func:`expected_pointwise`; G-Eval, Liu et al. 2023, arXiv 2303.16634)
    the pointwise prompt with a prefill ending where the score begins, and instead of the greedy score its
    expectation under the judge's next-token distribution: ``Σ_s s·p(s) / Σ_s p(s)`` over the scores of the
    template's range that are one token each (1–9 where digits are single tokens). It ties far less often than
    the greedy score (the embedded model's greedy score is 7 for every response).
``pairwise``
    every two different responses judged in both orders with a pairwise template (default ``rise``;
    :func:`posttrain.judges.scorers.judge_pairs`); a response's score is its number of wins over both orders,
    ``wins_first + wins_swapped``, each order's wins also kept (CREAM's ``orders`` consistency compares them).
    A verdict-less judgment is a format failure and a win for neither; two identical responses are not judged
    (neither wins); against an empty response the other wins both orders unjudged.

Internal signals (SCIR-style agreement, Zhou et al. 2025): :func:`internal_signals` adds the model's
self-certainty of each response (:func:`posttrain.ops.self_certainty`, Kang et al. 2025), LaSeR's
``log π(z_c | x, y, EOS)`` (Yang et al. 2025; a monotone function of ``r_s``, so it orders responses as ``r_s``
does), both from one forward pass per batch, and the DPO implicit reward against the previous iteration's
model, ``log π_θ(y | x) − log π_prev(y | x)`` (SCIR's second internal reward model; β > 0 does not change the
order, so it is left out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from posttrain.data import encode_prompts
from posttrain.judges.formats import resolve_template
from posttrain.judges.scorers import judge_pairs
from posttrain.models.self_scores import (
    completion_scores,
    continuation_logprobs,
    padded_batches,
    reserved_token,
    scoring,
)
from posttrain.ops import causal_lm_parts, soft_cap
from posttrain.rollout import RolloutEngine, SamplingParams, stop_token_ids

JUDGE_MODES = ("pointwise", "pairwise", "expected")
DEFAULT_TEMPLATES = {"pointwise": "pointwise", "pairwise": "rise", "expected": "pointwise"}
INTERNAL_SIGNALS = ("self_certainty", "laser", "implicit")


@dataclass
class Judged:
    """One judge's scores ``[prompt][response]`` (None: no score), the win counts of each order (pairwise only),
    and how many judgments it wrote and how many had no verdict."""

    scores: list[list[float | None]]
    orders: list[tuple[list[float], list[float]]] | None = None
    judgments: int = 0
    format_failures: int = 0
    outputs: list[list[str]] = field(default_factory=list)  # pointwise: each response's judgment


def judge_responses(engine: RolloutEngine, mode: str, template: str | None, questions: Sequence[str],
                    responses: Sequence[Sequence[str]], max_new_tokens: int = 256, prefill: str = "") -> Judged:
    """Score every prompt's responses with ``engine`` as the judge, by ``mode`` (module docstring); a pointwise
    judgment starts with ``prefill`` (module docstring)."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, n=1)
    if mode == "pointwise":
        return _pointwise(engine, template or DEFAULT_TEMPLATES[mode], questions, responses, params, prefill)
    if prefill:
        raise ValueError("a judgment prefill is for the pointwise judge only")
    if mode == "pairwise":
        return _pairwise(engine, template or DEFAULT_TEMPLATES[mode], questions, responses, params)
    raise ValueError(f"judge mode {mode!r} is not one of {', '.join(JUDGE_MODES)}")


def _pointwise(engine, template_name, questions, responses, params, prefill) -> Judged:
    template = resolve_template(template_name, "pointwise")
    messages = [template.render(question, text) for question, texts in zip(questions, responses, strict=True)
                for text in texts]
    prompt_ids = encode_prompts([{"prompt": message} for message in messages], engine.tokenizer)
    opening = engine.tokenizer.encode(prefill, add_special_tokens=False) if prefill else []
    prompt_ids = [[*ids, *opening] for ids in prompt_ids]
    outputs = iter(prefill + generation.text for generation in engine.generate(prompt_ids, params))
    judged = Judged([], judgments=len(messages))
    for texts in responses:
        written = [next(outputs) for _ in texts]
        scores = [template.parse(text) for text in written]
        judged.scores.append([None if score is None else float(score) for score in scores])
        judged.outputs.append(written)
        judged.format_failures += sum(score is None for score in scores)
    return judged


def _pairwise(engine, template_name, questions, responses, params) -> Judged:
    pairs, owners = [], []  # owners[k] = (prompt, i, j) of pairs[k]: response i shown first as A
    wins = [([0.0] * len(texts), [0.0] * len(texts)) for texts in responses]
    for prompt, (question, texts) in enumerate(zip(questions, responses, strict=True)):
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if texts[i] == texts[j]:
                    continue
                if not texts[i].strip() or not texts[j].strip():  # the non-empty one wins unjudged
                    winner = i if texts[i].strip() else j
                    for order in wins[prompt]:
                        order[winner] += 1
                    continue
                pairs.append({"prompt": question, "chosen": texts[i], "rejected": texts[j]})
                owners.append((prompt, i, j))
    rows = judge_pairs(engine, pairs, template_name, params).rows if pairs else []
    judged = Judged([], wins, judgments=len(rows), format_failures=sum(row["verdict"] is None for row in rows))
    for row in rows:
        if row["verdict"] is None:
            continue
        prompt, i, j = owners[row["pair_index"]]
        first = row["order"] == "first"
        winner = i if row["correct"] else j  # correct: the verdict names response i (A first, B swapped)
        wins[prompt][0 if first else 1][winner] += 1
    judged.scores = [[a + b for a, b in zip(*order, strict=True)] for order in wins]
    return judged


def internal_signals(model, tokenizer, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]],
                     signals: Sequence[str], token: str | None = None, batch_size: int = 8,
                     previous_model=None) -> dict[str, list[float]]:
    """The ``signals`` (of :data:`INTERNAL_SIGNALS`) of each completion, flat in the order given: self-certainty,
    LaSeR's reserved-token log-probability (``token``: the reserved token, None: chosen per tokenizer) and the
    implicit reward against ``previous_model`` (module docstring)."""
    wanted = [name for name in signals if name in INTERNAL_SIGNALS]
    values: dict[str, list[float]] = {}
    if "self_certainty" in wanted or "laser" in wanted:
        reserved_id = reserved_token(tokenizer, token) if "laser" in wanted else None
        scores = completion_scores(model, list(prompt_ids), list(completion_ids), stop_token_ids(model, tokenizer)[0],
                                   reserved_id, with_self_certainty="self_certainty" in wanted, batch_size=batch_size)
        if scores.self_certainty is not None:
            values["self_certainty"] = scores.self_certainty.tolist()
        if scores.reserved_logprobs is not None:
            values["laser"] = scores.reserved_logprobs.tolist()
    if "implicit" in wanted:
        if previous_model is None:
            raise ValueError("the implicit reward needs the previous iteration's model")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        current, previous = (continuation_logprobs(lm, list(prompt_ids), list(completion_ids), pad, batch_size)
                             for lm in (model, previous_model))
        values["implicit"] = [a - b for a, b in zip(current, previous, strict=True)]
    return {name: values[name] for name in wanted}


def expected_pointwise(model, tokenizer, template: str | None, questions: Sequence[str],
                       responses: Sequence[Sequence[str]], prefill: str, batch_size: int = 8) -> Judged:
    """Each response's expected pointwise score after ``prompt + prefill`` (the ``expected`` mode of the module
    docstring), one forward pass per ``batch_size`` judge prompts, reading only the last position's distribution."""
    chosen = resolve_template(template or DEFAULT_TEMPLATES["expected"], "pointwise")
    low, high = chosen.score_range
    values, token_ids = [], []
    for value in range(math.ceil(low), math.floor(high) + 1):
        ids = tokenizer.encode(str(value), add_special_tokens=False)
        if len(ids) == 1:
            values.append(float(value))
            token_ids.append(ids[0])
    if len(values) < 2 or not prefill:
        raise ValueError("the expected score needs a prefill that ends where the score begins (e.g. 'Score: [[') and "
                         "at least two scores of the template's range that are one token each")
    messages = [chosen.render(question, text) for question, texts in zip(questions, responses, strict=True)
                for text in texts]
    opening = tokenizer.encode(prefill, add_special_tokens=False)
    sequences = [[*ids, *opening] for ids in encode_prompts([{"prompt": m} for m in messages], tokenizer)]
    body, head, softcap = causal_lm_parts(model)
    device, candidates = head.weight.device, torch.tensor(token_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    expected: list[float] = []
    with scoring(model):
        for rows, batch in padded_batches(sequences, pad, batch_size, device):
            hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          use_cache=False).last_hidden_state
            last = hidden[torch.arange(len(rows)), torch.tensor([len(sequences[i]) - 1 for i in rows])]
            logits = soft_cap(last @ head.weight[candidates.to(device)].t(), softcap).float()
            expected += (logits.softmax(-1) @ torch.tensor(values, device=device)).tolist()
    scores = iter(expected)
    return Judged([[next(scores) for _ in texts] for texts in responses], judgments=len(messages))
