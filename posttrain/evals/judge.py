"""``posttrain eval judge``: how often a reward source prefers the chosen answer of a preference pair.

A thin command over :mod:`posttrain.judges`: the pairs (:func:`~posttrain.judges.pairs.preference_pairs`), a scorer
(:mod:`posttrain.judges.scorers`: a generative judge in both orders, or a scalar reward model) and the figures of
its judgments (:mod:`posttrain.judges.metrics`), printed as a table. A pointwise template (``j1_pointwise``,
``pointwise``) scores each response alone (:mod:`posttrain.judges.pointwise`). With ``votes`` K > 1 every prompt is
judged K times (sampled) and the figures are given both per judgment and for the voted judge (majority verdict, or
mean score; :mod:`posttrain.judges.voting`) under ``voted``.
"""

from __future__ import annotations

from pydantic import Field

from posttrain.errors import ConfigError
from posttrain.evals.run import write_eval
from posttrain.judges.formats import TEMPLATES, resolve_template
from posttrain.judges.metrics import group_metrics
from posttrain.judges.pairs import preference_pairs
from posttrain.judges.pointwise import judge_pairs_pointwise
from posttrain.judges.scorers import SCORERS, judge_pairs, reward_model_pairs
from posttrain.judges.voting import voted_rows
from posttrain.models import load_tokenizer
from posttrain.models.reward import load_reward_model
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import EvalOptions


class JudgeEvalOptions(EvalOptions):
    """``posttrain eval judge``: ``data`` a preference file or ``task:arithmetic``; the judge ``template`` (pairwise,
    or a built-in pointwise one), the ``scorer`` (``judge`` or ``reward_model``), ``samples`` judgments per pair and
    order, or ``votes`` sampled judgments voted into one (module docstring)."""

    template: str = "rise"
    scorer: str = "judge"
    samples: int = Field(1, ge=1)
    votes: int = Field(1, ge=1)
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
    samples = _judgments_per_prompt(options)
    pairs = preference_pairs(options.data, options.n, options.seed)
    tokenizer = load_tokenizer(model)
    if scorer == "judge":
        builtin = TEMPLATES.get(options.template)
        template = resolve_template(options.template, builtin.kind if builtin else "pairwise")
        engine = tool_engine(model, options.engine, batch_size=options.batch_size, tokenizer=tokenizer)
        score = judge_pairs_pointwise if template.kind == "pointwise" else judge_pairs
        result = score(engine, pairs, template, options.sampling(samples))
        setup = {"template": template.name, "samples": samples, "temperature": options.temperature}
        if options.votes > 1:
            setup.update(votes=options.votes, voted=group_metrics(voted_rows(result.rows)))
    else:
        result = reward_model_pairs(load_reward_model(model, require_head=True), tokenizer, pairs,
                                    batch_size=options.batch_size)
        setup = {}
    summary = {"model": model, "data": options.data, "scorer": scorer, **setup, **result.metrics}
    write_eval(options.out_dir, "judge", summary, result.rows)
    return summary


def _judgments_per_prompt(options: JudgeEvalOptions) -> int:
    """``votes`` when voting (refusing greedy decoding, a reward model, or a different ``samples``), else ``samples``."""
    if options.votes == 1:
        return options.samples
    if options.scorer != "judge":
        raise ConfigError("--votes applies to a generative judge, and a reward model's score is deterministic",
                          where="--votes", fix="drop --votes with --scorer reward_model")
    if options.temperature == 0:
        raise ConfigError(f"--votes {options.votes} with greedy decoding votes over {options.votes} copies of one "
                          "judgment", where="--temperature", fix="sample the judgments, e.g. --temperature 1.0")
    if options.samples not in (1, options.votes):
        raise ConfigError(f"--samples {options.samples} and --votes {options.votes} disagree: voting uses --votes "
                          "sampled judgments per prompt", where="--samples", fix="give only --votes")
    return options.votes


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
    if result.get("voted"):
        lines.append(line(f"voted ({result['votes']})", result["voted"]))
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
