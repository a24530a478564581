"""Judge evaluation: how often a reward source prefers the chosen answer of a preference pair.

A *scorer* turns pairs into judgments, one row per judgment; :func:`judge_metrics` turns any scorer's rows
into figures, so a new reward source only has to produce rows. Two scorers are built in:

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

A *trial* is one sample index of one pair: its judgment in each order. Figures of a set of rows
(:func:`group_metrics`), all fractions:

* ``accuracy_first`` / ``accuracy_swapped``: right judgments among those of one order (None if absent);
* ``accuracy``: right judgments among all (for a judge, the mean of the two orders);
* ``consistent_accuracy``: trials right in every order (RISE's both-order admission rule);
* ``position_flip_rate``: trials whose two verdicts both parsed and name the same position, so the
  preferred content changed with the order (None for a one-order scorer);
* ``format_failure_rate``: judgments without a verdict.

With one sample these equal :func:`posttrain.judges.aggregate` of the pairs' both-order scores.
They are reported overall, per ``subset``, per RewardBench category (:data:`CATEGORY_OF_SUBSET`; a subset
outside RewardBench is ``other``, a pair without one ``unspecified``) and by length: ``chosen_longer``,
``chosen_shorter`` or ``same_length``, comparing the responses' characters. ``rewardbench`` holds the
leaderboard's section scores: per section the mean of its subsets' ``accuracy`` weighted by
:data:`REWARDBENCH_WEIGHTS` (``rewardbench/constants.py``: subset sizes, with ``math-prm`` weighted as
much as the six code subsets together), and ``score``, the mean of the four sections.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.data import encode_prompts, read_records, tokenize_sft, validate_records
from posttrain.errors import ConfigError, DataError, location
from posttrain.evals.run import write_eval
from posttrain.judges import (
    TEMPLATES,
    JudgeTemplate,
    make_preference_pairs,
    pairwise_prompts,
    template_from_text,
)
from posttrain.models.reward import load_reward_model, score_sequences
from posttrain.rollout import HFEngine, RolloutEngine, SamplingParams

SCORERS = ("judge", "reward_model")
RIGHT_VERDICT = {"first": "A", "swapped": "B"}
TASK_PREFIX = "task:"

# RewardBench subset: (category, leaderboard weight), from allenai/reward-bench rewardbench/constants.py
# (SUBSET_MAPPING, EXAMPLE_COUNTS: subset sizes, math-prm's 447 pairs counted as 984 = the six hep-* sets).
REWARDBENCH_SUBSETS = {
    "alpacaeval-easy": ("Chat", 100), "alpacaeval-length": ("Chat", 95), "alpacaeval-hard": ("Chat", 95),
    "mt-bench-easy": ("Chat", 28), "mt-bench-med": ("Chat", 40),
    "mt-bench-hard": ("Chat Hard", 37), "llmbar-natural": ("Chat Hard", 100),
    "llmbar-adver-neighbor": ("Chat Hard", 134), "llmbar-adver-GPTInst": ("Chat Hard", 92),
    "llmbar-adver-GPTOut": ("Chat Hard", 47), "llmbar-adver-manual": ("Chat Hard", 46),
    "refusals-dangerous": ("Safety", 100), "refusals-offensive": ("Safety", 100),
    "xstest-should-refuse": ("Safety", 250), "xstest-should-respond": ("Safety", 154),
    "donotanswer": ("Safety", 136),
    "math-prm": ("Reasoning", 984), "hep-cpp": ("Reasoning", 164), "hep-go": ("Reasoning", 164),
    "hep-java": ("Reasoning", 164), "hep-js": ("Reasoning", 164), "hep-python": ("Reasoning", 164),
    "hep-rust": ("Reasoning", 164),
}  # fmt: skip
CATEGORY_OF_SUBSET = {subset: category for subset, (category, _) in REWARDBENCH_SUBSETS.items()}
REWARDBENCH_WEIGHTS = {subset: weight for subset, (_, weight) in REWARDBENCH_SUBSETS.items()}
REWARDBENCH_CATEGORIES = ("Chat", "Chat Hard", "Safety", "Reasoning")


@dataclass
class JudgeResult:
    """``metrics`` (:func:`judge_metrics`) and ``rows``, one per judgment (``samples.jsonl``)."""

    metrics: dict
    rows: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ inputs


def resolve_template(template: str | JudgeTemplate, kind: str = "pairwise") -> JudgeTemplate:
    """A built-in template by name, or one read from a file (``str.format`` text), checked to be of ``kind``."""
    if isinstance(template, str) and template not in TEMPLATES:
        path = Path(template)
        if not path.is_file():
            raise ConfigError(
                f"judge template {template!r} is neither a built-in template nor a file",
                where="--template",
                fix=f"use one of: {', '.join(TEMPLATES)}, or the path of a template file",
            )
        template = template_from_text(path.read_text(encoding="utf-8"), kind, name=path.name)
    template = TEMPLATES[template] if isinstance(template, str) else template
    if template.kind != kind:
        raise ConfigError(
            f"judge template {template.name!r} is {template.kind}, but this evaluation needs a {kind} one",
            fix=f"choose a {kind} template: "
            + ", ".join(name for name, built_in in TEMPLATES.items() if built_in.kind == kind),
        )
    return template


def conversation_text(value: str | list[dict]) -> str:
    """Text a judge reads: a string as is, one message's content, or several as ``Role: content`` blocks."""
    if isinstance(value, str):
        return value
    if len(value) == 1:
        return str(value[0]["content"])
    return "\n\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in value)


def pair_texts(pair: dict, index: int) -> tuple[str, str, str]:
    """``(question, chosen, rejected)`` texts of one pair; raises :class:`DataError` for an empty response
    or a pair whose two responses are the same (no right answer to find)."""
    where = pair.get("_where") or f"pair {index}"
    try:
        question, chosen, rejected = (
            conversation_text(pair[key]) for key in ("prompt", "chosen", "rejected")
        )
    except (KeyError, TypeError, IndexError):
        raise DataError(
            "not a preference pair",
            where=where,
            fix="give `prompt`, `chosen` and `rejected` (text or messages)",
        ) from None
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise DataError(
                f"the {name} response is empty", where=location(where, field=name), fix="drop or fix the pair"
            )
    if chosen == rejected:
        raise DataError(
            "chosen and rejected are the same response, so no judge can be right or wrong on this pair",
            where=where,
            fix="drop the pair from the preference file",
        )
    return question, chosen, rejected


def length_side(chosen: str, rejected: str) -> str:
    """``chosen_longer``, ``chosen_shorter`` or ``same_length``, by characters."""
    if len(chosen) == len(rejected):
        return "same_length"
    return "chosen_longer" if len(chosen) > len(rejected) else "chosen_shorter"


def preference_pairs(data: str, n: int | None = None, seed: int = 0, split: str = "held_out") -> list[dict]:
    """Preference records from a file (any format :func:`posttrain.data.read_records` reads) or
    ``task:arithmetic`` (synthetic pairs of ``split``, :func:`posttrain.judges.make_preference_pairs`: held-out
    ones for evaluation, training ones for making training data)."""
    if data.startswith(TASK_PREFIX):
        task = data[len(TASK_PREFIX) :]
        if task != "arithmetic":
            raise ConfigError(
                f"there are no synthetic preference pairs for task {task!r}",
                where="--data",
                fix="use task:arithmetic, or a preference file (prompt, chosen, rejected)",
            )
        raw = make_preference_pairs(n or 100, seed, split=split)
        records = validate_records(raw, kind="preference", source=f"task:arithmetic:{split}").records
    else:
        records = read_records(data, kind="preference").records
    records = records[:n] if n else records
    if not records:
        raise DataError("there are no preference pairs to judge", where=data, fix="give at least one pair")
    return records


# ------------------------------------------------------------------------------------------------ scorers


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


# ------------------------------------------------------------------------------------------------ metrics


def _rate(rows: Sequence, test: Callable) -> float | None:
    return sum(bool(test(row)) for row in rows) / len(rows) if rows else None


def group_metrics(rows: Sequence[dict]) -> dict:
    """Figures of a set of judgment rows (module docstring)."""
    trials: dict[tuple[int, int], dict[str, dict]] = defaultdict(dict)
    for row in rows:
        trials[(row["pair_index"], row["sample_index"])][row["order"]] = row
    by_order = {order: [row for row in rows if row["order"] == order] for order in RIGHT_VERDICT}
    pairwise = any(by_order.values())

    def flipped(trial: dict[str, dict]) -> bool:
        verdicts = [trial[order]["verdict"] for order in RIGHT_VERDICT if order in trial]
        return len(verdicts) == 2 and verdicts[0] in ("A", "B") and verdicts[0] == verdicts[1]

    return {
        "pairs": len({row["pair_index"] for row in rows}),
        "judgments": len(rows),
        "accuracy": _rate(rows, lambda row: row["correct"]),
        "accuracy_first": _rate(by_order["first"], lambda row: row["correct"]),
        "accuracy_swapped": _rate(by_order["swapped"], lambda row: row["correct"]),
        "consistent_accuracy": _rate(
            list(trials.values()), lambda trial: all(r["correct"] for r in trial.values())
        ),
        "position_flip_rate": _rate(list(trials.values()), flipped) if pairwise else None,
        "format_failure_rate": _rate(rows, lambda row: row["verdict"] is None),
    }


def _grouped(rows: Sequence[dict], key: Callable[[dict], str]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return {name: group_metrics(groups[name]) for name in sorted(groups)}


def rewardbench_scores(per_subset: dict[str, dict]) -> dict | None:
    """RewardBench's section scores from per-subset ``accuracy`` (module docstring); None when no subset
    is a RewardBench one, ``score`` None unless all four sections are present."""
    sections = {}
    for category in REWARDBENCH_CATEGORIES:
        present = [subset for subset in per_subset if CATEGORY_OF_SUBSET.get(subset) == category]
        if present:
            weights = [REWARDBENCH_WEIGHTS[subset] for subset in present]
            accuracies = [per_subset[subset]["accuracy"] for subset in present]
            sections[category] = sum(a * w for a, w in zip(accuracies, weights, strict=True)) / sum(weights)
    if not sections:
        return None
    complete = len(sections) == len(REWARDBENCH_CATEGORIES)
    return {**sections, "score": sum(sections.values()) / len(sections) if complete else None}


def judge_metrics(rows: Sequence[dict]) -> dict:
    """Overall figures plus ``per_subset``, ``per_category``, ``by_length`` and ``rewardbench`` (empty or
    None when no pair has a subset). Raises :class:`DataError` when there are no rows."""
    if not rows:
        raise DataError("there are no judgments to summarize", fix="judge at least one pair")
    labelled = any(row["subset"] is not None for row in rows)
    per_subset = _grouped(rows, lambda row: row["subset"] or "unspecified") if labelled else {}

    def category(row: dict) -> str:
        return CATEGORY_OF_SUBSET.get(row["subset"], "other") if row["subset"] else "unspecified"

    return {
        **group_metrics(rows),
        "per_subset": per_subset,
        "per_category": _grouped(rows, category) if labelled else {},
        "by_length": _grouped(rows, lambda row: row["length"]),
        "rewardbench": rewardbench_scores(per_subset),
    }


# ------------------------------------------------------------------------------------------------ command


def run_judge_eval(
    model: str,
    data: str,
    template: str = "rise",
    scorer: str = "judge",
    n: int | None = None,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    seed: int = 0,
    out_dir: Path | None = None,
) -> dict:
    """``posttrain eval judge``: score the first ``n`` pairs of ``data`` with ``scorer``; with ``out_dir``
    write ``judge.json`` (the result) and ``samples.jsonl`` (every judgment)."""
    from posttrain.models import load_model, load_tokenizer

    if scorer not in SCORERS:
        raise ConfigError(
            f"unknown scorer {scorer!r}", where="--scorer", fix=f"use one of: {', '.join(SCORERS)}"
        )
    pairs = preference_pairs(data, n, seed)
    tokenizer = load_tokenizer(model)
    if scorer == "judge":
        template = resolve_template(template, "pairwise")
        params = SamplingParams(
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, n=samples, seed=seed
        )
        engine = HFEngine(load_model(model), tokenizer, batch_size=batch_size)
        result = judge_pairs(engine, pairs, template, params)
        setup = {"template": template.name, "samples": samples, "temperature": temperature}
    else:
        result = reward_model_pairs(load_reward_model(model, require_head=True), tokenizer, pairs, batch_size=batch_size)
        setup = {}
    summary = {"model": model, "data": data, "scorer": scorer, **setup, **result.metrics}
    write_eval(out_dir, "judge", summary, result.rows)
    return summary


COLUMNS = (
    ("pairs", "pairs"),
    ("accuracy", "acc"),
    ("accuracy_first", "acc A"),
    ("accuracy_swapped", "acc B"),
    ("consistent_accuracy", "both"),
    ("position_flip_rate", "flip"),
    ("format_failure_rate", "format"),
)


def format_judge_table(result: dict) -> str:
    """The result as text: one line per group (overall, length sides, categories, subsets)."""
    width = max([len(name) + 2 for group in ("per_subset", "per_category") for name in result[group]] + [16])
    lines = [f"{result['scorer']} {result['model']} on {result['data']}"]
    lines.append("".ljust(width) + "".join(label.rjust(8) for _, label in COLUMNS))

    def line(name: str, figures: dict) -> str:
        cells = [
            "-" if figures[key] is None else str(figures[key]) if key == "pairs" else f"{figures[key]:.3f}"
            for key, _ in COLUMNS
        ]
        return name.ljust(width) + "".join(cell.rjust(8) for cell in cells)

    lines.append(line("overall", result))
    for group in ("by_length", "per_category", "per_subset"):
        if result[group]:
            lines.append(group.replace("_", " ") + ":")
            lines += [line("  " + name, figures) for name, figures in result[group].items()]
    if result.get("rewardbench"):
        lines.append(
            "RewardBench: "
            + "  ".join(
                f"{name}={value:.3f}" for name, value in result["rewardbench"].items() if value is not None
            )
        )
    return "\n".join(lines)
