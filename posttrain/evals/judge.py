"""``posttrain eval judge``: how often a reward source prefers the chosen answer of a preference pair.

A thin command over :mod:`posttrain.judges`: the pairs (:func:`~posttrain.judges.pairs.preference_pairs`), a scorer
(:mod:`posttrain.judges.scorers`: a generative judge in both orders, or a scalar reward model) and the figures of
its judgments (:mod:`posttrain.judges.metrics`), printed as a table.
"""

from __future__ import annotations

from posttrain.errors import ConfigError
from posttrain.evals.run import write_eval
from posttrain.judges.formats import resolve_template
from posttrain.judges.pairs import preference_pairs
from posttrain.judges.scorers import SCORERS, judge_pairs, reward_model_pairs
from posttrain.models import load_tokenizer
from posttrain.models.reward import load_reward_model
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import EvalOptions


class JudgeEvalOptions(EvalOptions):
    """``posttrain eval judge``: ``data`` a preference file or ``task:arithmetic``; the pairwise ``template``, the
    ``scorer`` (``judge`` or ``reward_model``), ``samples`` judgments per pair and order."""

    template: str = "rise"
    scorer: str = "judge"
    samples: int = 1
    temperature: float = 0.0
    max_new_tokens: int = 512


def run_judge_eval(options: JudgeEvalOptions) -> dict:
    """``posttrain eval judge``: score the first ``n`` pairs of ``data`` with ``scorer``; with ``out_dir``
    write ``judge.json`` (the result) and ``samples.jsonl`` (every judgment)."""
    scorer, model = options.scorer, options.model
    if scorer not in SCORERS:
        raise ConfigError(
            f"unknown scorer {scorer!r}", where="--scorer", fix=f"use one of: {', '.join(SCORERS)}"
        )
    pairs = preference_pairs(options.data, options.n, options.seed)
    tokenizer = load_tokenizer(model)
    if scorer == "judge":
        template = resolve_template(options.template, "pairwise")
        engine = tool_engine(model, options.engine, batch_size=options.batch_size, tokenizer=tokenizer)
        result = judge_pairs(engine, pairs, template, options.sampling(options.samples))
        setup = {"template": template.name, "samples": options.samples, "temperature": options.temperature}
    else:
        result = reward_model_pairs(load_reward_model(model, require_head=True), tokenizer, pairs,
                                    batch_size=options.batch_size)
        setup = {}
    summary = {"model": model, "data": options.data, "scorer": scorer, **setup, **result.metrics}
    write_eval(options.out_dir, "judge", summary, result.rows)
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
