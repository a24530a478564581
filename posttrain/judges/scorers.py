"""Judge scorers: they turn preference pairs into judgments, one row per judgment; :mod:`posttrain.judges.metrics`
turns any scorer's rows into figures, so a new reward source only has to produce rows. Two scorers are built in:

``judge`` (:func:`judge_pairs`)
    a generative judge with a pairwise template (``rise``, ``j1`` or the user's, see
    :mod:`posttrain.judges.formats`). Every pair is judged in both orders, ``first`` (chosen shown as A,
    right verdict ``A``) and ``swapped`` (chosen shown as B, right verdict ``B``), ``params.n`` samples per
    order; the last verdict token is the verdict and an output without one is a format failure, counted
    wrong, never defaulted (RISE-Judge, arXiv 2502.11689, §3.2 of our notes; J1, arXiv 2505.10320).
``reward_model`` (:func:`reward_model_pairs`)
    a sequence-classification model's scalar score ``r(x, y)`` of each response, read at the last token;
    the pair is right when ``r(x, y_c) > r(x, y_r)`` (a tie is wrong, as in RewardBench). One order,
    ``single``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from posttrain.data import encode_prompts, tokenize_sft
from posttrain.errors import ConfigError, DataError
from posttrain.judges.formats import JudgeTemplate, resolve_template
from posttrain.judges.metrics import judge_metrics
from posttrain.judges.pairs import RIGHT_VERDICT, length_side, pair_texts, pairwise_prompts
from posttrain.models.reward import score_sequences
from posttrain.rollout import RolloutEngine, SamplingParams

SCORERS = ("judge", "reward_model")


@dataclass
class JudgeResult:
    """``metrics`` (:func:`~posttrain.judges.metrics.judge_metrics`) and ``rows``, one per judgment (``samples.jsonl``)."""

    metrics: dict
    rows: list[dict] = field(default_factory=list)


def judge_pairs(
    engine: RolloutEngine,
    pairs: Sequence[dict],
    template: str | JudgeTemplate = "rise",
    params: SamplingParams | None = None,
    *,
    tokenizer=None,
) -> JudgeResult:
    """Judge every pair in both orders with a generative judge (module docstring).

    ``params`` defaults to greedy decoding of at most 512 tokens; ``params.n`` samples per order. The
    prompts are chat-formatted with ``tokenizer`` (default: ``engine.tokenizer``) and generated in one call.
    """
    template = resolve_template(template, "pairwise")
    params = params or SamplingParams(temperature=0.0, max_new_tokens=512)
    tokenizer = tokenizer if tokenizer is not None else getattr(engine, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("judging needs a tokenizer for the judge prompts", fix="pass tokenizer=...")
    entries, messages = [], []  # one per judge prompt: what its rows share, and the prompt itself
    for index, pair in enumerate(pairs):
        question, chosen, rejected = pair_texts(pair, index)
        common = {"pair_index": index, "subset": pair.get("subset"), "length": length_side(chosen, rejected)}
        for order, prompt in zip(
            RIGHT_VERDICT, pairwise_prompts(question, chosen, rejected, template), strict=True
        ):
            entries.append({**common, "order": order, "prompt": prompt[0]["content"]})
            messages.append(prompt)
    prompt_ids = encode_prompts([{"prompt": prompt} for prompt in messages], tokenizer)
    rows = []
    for generation in engine.generate(prompt_ids, params):
        entry = entries[generation.prompt_index]
        verdict = template.parse(generation.text)
        correct = verdict == RIGHT_VERDICT[entry["order"]]
        rows.append(
            {**entry, "sample_index": generation.sample_index, "output": generation.text,
             "finish_reason": generation.finish_reason, "verdict": verdict, "correct": correct}
        )  # fmt: skip
    return JudgeResult(judge_metrics(rows), rows)


def reward_model_pairs(
    model, tokenizer, pairs: Sequence[dict], batch_size: int = 8, max_length: int = 4096
) -> JudgeResult:
    """Score both responses of every pair with a scalar reward model (module docstring).

    Each response is tokenized with its prompt as in SFT (:func:`posttrain.data.tokenize_sft`: chat
    template, or prompt + response + EOS for plain strings), cut to ``max_length`` tokens from the right.
    """
    records, sides = [], []
    for index, pair in enumerate(pairs):
        question, chosen, rejected = pair_texts(pair, index)
        sides.append((question, length_side(chosen, rejected)))
        where = pair.get("_where") or f"pair {index}"
        records += [
            {"prompt": pair["prompt"], "completion": pair[key], "_where": where}
            for key in ("chosen", "rejected")
        ]
    tokenized = tokenize_sft(records, tokenizer, max_length)
    if tokenized.dropped:
        raise DataError(
            f"{tokenized.dropped} responses have a prompt of {max_length} tokens or more",
            fix="raise max_length, or drop the pairs with the longest prompts",
        )
    scores = score_sequences(model, [example.input_ids for example in tokenized], batch_size)
    rows = []
    for index, (pair, (question, side)) in enumerate(zip(pairs, sides, strict=True)):
        chosen_score, rejected_score = scores[2 * index], scores[2 * index + 1]
        verdict = "chosen" if chosen_score > rejected_score else "rejected"
        rows.append(
            {"pair_index": index, "order": "single", "sample_index": 0, "subset": pair.get("subset"),
             "length": side, "prompt": question, "output": None, "chosen_score": chosen_score,
             "rejected_score": rejected_score, "verdict": "tie" if chosen_score == rejected_score else verdict,
             "correct": chosen_score > rejected_score}
        )  # fmt: skip
    metrics = judge_metrics(rows)
    metrics["truncated_responses"] = tokenized.truncated
    return JudgeResult(metrics, rows)
