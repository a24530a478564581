"""LaSeR self-reward evaluation: how well ``r_s`` tells correct completions from incorrect ones.

LaSeR (Yang et al., 2025, arXiv 2510.14943) scores a finished completion ``y`` of a prompt ``x`` by one
forward pass over ``x, y, EOS, z_c``: ``r_s = β_v·(log π_θ(z_c | x, y, EOS) − c_ref)``
(:func:`posttrain.ops.laser_score`), where ``z_c`` is a reserved token the model never emits. Before
training, ``log π(z_c | x, y, EOS)`` should be nearly the same for every input (methods.md §6.5.1:
:func:`measure_reserved_token`); its mean is the natural ``c_ref``.

Metrics (as the official ``src/calculate_self_rewarding_scores.py``): a completion is judged correct when
``r_s > threshold`` (0.5); accuracy on correct completions, accuracy on incorrect completions, F1 = the
harmonic mean of those two accuracies, and the rank-based AUROC of ``r_s`` against the verifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from posttrain.data import encode_prompts
from posttrain.errors import DataError, location
from posttrain.evals.run import prompt_records
from posttrain.grading import grade
from posttrain.models import load_model, load_tokenizer
from posttrain.models.self_scores import completion_scores, reserved_token
from posttrain.ops import laser_score
from posttrain.rollout import stop_token_ids
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import EvalOptions


def reserved_logprobs(
    model,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    eos_id: int,
    reserved_id: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """``log π(z_c | x, y, EOS)`` for every (prompt, completion) pair → ``[B]`` (see :func:`completion_scores`)."""
    return completion_scores(
        model, prompt_ids, completion_ids, eos_id, reserved_id, batch_size=batch_size
    ).reserved_logprobs


def given_completions(records: list[dict], tokenizer) -> tuple[list[str], list[list[int]]]:
    """The text and token ids of each record's ``completion`` (a string, or messages ending with the
    assistant's turn); encoded without special tokens, as the model wrote it after the prompt."""
    texts = []
    for record in records:
        completion = record.get("completion")
        if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
            completion = completion[-1].get("content")
        if not isinstance(completion, str) or not completion.strip():
            raise DataError(
                "the record has no completion to score",
                where=location(record.get("_where"), field="completion"),
                fix="give every record a non-empty `completion` (text or assistant message), or none to sample",
            )
        texts.append(completion)
    return texts, [tokenizer.encode(text, add_special_tokens=False) for text in texts]


def measure_reserved_token(
    model, tokenizer, records: list[dict], token: str | None = None, batch_size: int = 8
) -> dict:
    """Mean and standard deviation of ``log π(z_c | x, y, EOS)`` over the records' prompts and completions.

    The sanity check of methods.md §6.5.1: a usable ``z_c`` has a tiny standard deviation (LaSeR reports
    −23.11 ± 0.04 for Qwen2.5), and the mean is the ``c_ref`` to use.
    """
    reserved_id = reserved_token(tokenizer, token)
    _, completions = given_completions(records, tokenizer)
    logprobs = reserved_logprobs(
        model,
        encode_prompts(records, tokenizer),
        completions,
        stop_token_ids(model, tokenizer)[0],
        reserved_id,
        batch_size=batch_size,
    )
    return {
        "reserved_token": tokenizer.convert_ids_to_tokens(reserved_id),
        "reserved_token_id": reserved_id,
        "count": logprobs.numel(),
        "mean": logprobs.mean().item(),
        "std": logprobs.std().item() if logprobs.numel() > 1 else 0.0,
    }


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve: the probability that a random positive outscores a random negative, ties
    counting half (the Mann–Whitney statistic from mid-ranks). None when either class is empty."""
    positives = sum(bool(label) for label in labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    positive_rank_sum = sum(rank for rank, label in zip(ranks, labels, strict=True) if label)
    return (positive_rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def selfreward_metrics(scores: list[float], correct: list[bool], threshold: float = 0.5) -> dict:
    """Self-verification of ``scores`` (``r_s``) against the verifier's ``correct``.

    ``accuracy_on_correct`` = share of correct completions with ``r_s > threshold``; ``accuracy_on_incorrect``
    = share of incorrect ones with ``r_s ≤ threshold``; ``f1`` = their harmonic mean; ``auroc`` as
    :func:`auroc`. A value that needs an empty class is None.
    """
    if len(scores) != len(correct):
        raise DataError(f"{len(scores)} scores but {len(correct)} verdicts", fix="give one verdict per score")
    on_correct = [s > threshold for s, c in zip(scores, correct, strict=True) if c]
    on_incorrect = [s <= threshold for s, c in zip(scores, correct, strict=True) if not c]
    accuracy_correct = sum(on_correct) / len(on_correct) if on_correct else None
    accuracy_incorrect = sum(on_incorrect) / len(on_incorrect) if on_incorrect else None
    f1 = None
    if accuracy_correct is not None and accuracy_incorrect is not None:
        total = accuracy_correct + accuracy_incorrect
        f1 = 2 * accuracy_correct * accuracy_incorrect / total if total else 0.0
    return {
        "accuracy_on_correct": accuracy_correct,
        "accuracy_on_incorrect": accuracy_incorrect,
        "f1": f1,
        "auroc": auroc(scores, correct),
        "num_correct": len(on_correct),
        "num_incorrect": len(on_incorrect),
    }


class SelfRewardOptions(EvalOptions):
    """``posttrain eval selfreward``: ``samples`` completions per prompt when the data has none; LaSeR's
    ``c_ref``, ``beta_v``, ``threshold`` and reserved ``token`` (None: chosen per tokenizer)."""

    samples: int = 4
    c_ref: float = -23.0
    beta_v: float = 0.1
    threshold: float = 0.5
    token: str | None = None


def evaluate_selfreward(model, tokenizer, records: list[dict], options: SelfRewardOptions | None = None) -> dict:
    """Score completions with ``r_s`` and compare with the verifier (module docstring).

    When the records have a ``completion``, those are scored (every record needs one); otherwise
    ``options.samples`` completions per prompt are sampled under the options' sampling settings, with HF on
    ``model`` or, with ``options.engine`` vllm, a vLLM engine on ``options.model`` (``data`` and ``n`` are not
    read here). With ``out_dir``, every scored
    completion is written to ``out_dir/samples.jsonl``.
    """
    options = options or SelfRewardOptions()
    reserved_id = reserved_token(tokenizer, options.token)
    eos_id = stop_token_ids(model, tokenizer)[0]
    prompt_ids = encode_prompts(records, tokenizer)
    given = any("completion" in record for record in records)
    if given:
        texts, completions = given_completions(records, tokenizer)
        rows = [{"prompt_index": i, "sample_index": 0, "completion": text} for i, text in enumerate(texts)]
    else:
        engine = tool_engine(options.model, options.engine, batch_size=options.batch_size, tokenizer=tokenizer,
                             lm=model)
        generations = engine.generate(prompt_ids, options.sampling(options.samples))
        completions = [g.token_ids for g in generations]
        rows = [
            {
                "prompt_index": g.prompt_index,
                "sample_index": g.sample_index,
                "completion": g.text,
                "finish_reason": g.finish_reason,
            }
            for g in generations
        ]
    owners = [prompt_ids[row["prompt_index"]] for row in rows]
    logprobs = reserved_logprobs(model, owners, completions, eos_id, reserved_id, batch_size=options.batch_size)
    scores = laser_score(logprobs, options.c_ref, options.beta_v)
    for row, logprob, score in zip(rows, logprobs.tolist(), scores.tolist(), strict=True):
        reference = records[row["prompt_index"]]["reference"]
        row["extracted"], row["correct"] = grade(row["completion"], reference)
        row.update(reference=str(reference), reserved_logprob=logprob, laser_score=score)
    if options.out_dir is not None:
        _write_rows(Path(options.out_dir) / "samples.jsonl", rows)
    correct = [row["correct"] for row in rows]
    return {
        "reserved_token": tokenizer.convert_ids_to_tokens(reserved_id),
        "reserved_token_id": reserved_id,
        "c_ref": options.c_ref,
        "beta_v": options.beta_v,
        "threshold": options.threshold,
        "completions": "given" if given else "sampled",
        "num_prompts": len(records),
        "num_completions": len(rows),
        "verifier_accuracy": sum(correct) / len(correct),
        "reserved_logprob_mean": logprobs.mean().item(),
        "reserved_logprob_std": logprobs.std().item() if logprobs.numel() > 1 else 0.0,
        "reserved_prob_mean": logprobs.exp().mean().item(),
        **selfreward_metrics(scores.tolist(), correct, options.threshold),
    }


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_selfreward_eval(options: SelfRewardOptions) -> dict:
    """``posttrain eval selfreward``: load ``model`` and ``data`` (a file or ``task:NAME``), run
    :func:`evaluate_selfreward` on its first ``n`` records."""
    tokenizer = load_tokenizer(options.model)
    lm = load_model(options.model)
    records = prompt_records(options.data, options.n, options.seed)
    result = evaluate_selfreward(lm, tokenizer, records, options)
    return {"model": options.model, "data": options.data, **result}
