"""``posttrain eval gap``: the solve-to-judge gap of a generative judge, and its spurious successes.

For labelled pairs of objective questions (each with a ``reference`` answer), the model

1. **solves** each question ``k`` times on its own (the question as the prompt, sampled); the question is
   *solvable* when at least ``m`` of the ``k`` answers are right (default ``m = k``: all of them);
2. **judges** the pair in both orders with a GRM template (greedy by default).

Reported (S2J, Sun et al. 2025, arXiv 2509.22099; methods.md §5.2), over the ``2n`` judgments:

* ``judge_accuracy``, ``accuracy_first`` / ``accuracy_swapped`` (per A/B order), ``consistent_accuracy``
  (both orders right), ``position_flip_rate`` (the same letter in both orders) and ``format_failure_rate``,
  as :func:`posttrain.judges.metrics.group_metrics` defines them;
* ``solve_accuracy`` (over all ``n·k`` answers) and ``solvable_fraction``;
* ``judge_accuracy_solvable`` and the **gap** ``P(judgment wrong | solvable)``;
* ``judge_accuracy_unsolved``: ``P(judgment right | none of the k answers right)``;
* with the ``s2j`` template, which solves inside the judgment: ``own_solve_accuracy`` and
  ``P(judgment right | its own solution wrong)`` / ``… right)`` — whether the judge copies its own solution;
* ``spurious_success_rate`` (RM-NLHF, Wang et al. 2026, arXiv 2601.07349, §4.1; methods.md §4.8): among right
  verdicts on pairs with a ``critique``, the fraction whose generated critique's similarity to it is below the
  backend's threshold (a right outcome for the wrong reason).

Under ``grm``/``s2j`` a judgment is right only when it is well formed (:func:`posttrain.judges.grm.parse_grm`);
other pairwise templates use their verdict parser.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import field_validator

from posttrain.data import encode_prompts
from posttrain.data.readers import read_jsonl_objects
from posttrain.errors import DataError
from posttrain.evals.run import write_eval
from posttrain.grading import grade
from posttrain.judges.formats import resolve_template
from posttrain.judges.grm import parsed
from posttrain.judges.metrics import group_metrics
from posttrain.judges.pairs import RIGHT_VERDICT, pair_texts, preference_pairs
from posttrain.judges.scorers import judge_pairs
from posttrain.judges.similarity import build_similarity, quantize
from posttrain.rollout import RolloutEngine, SamplingParams
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import EngineOptions


def _rate(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def solve_counts(engine: RolloutEngine, pairs: Sequence[dict], params: SamplingParams) -> list[tuple[int, int]]:
    """``(right, k)`` per pair: the model's own ``params.n`` answers to each question, scored against its
    reference."""
    records = []
    for index, pair in enumerate(pairs):
        reference = pair.get("reference")
        if reference is None or not str(reference).strip():
            raise DataError("the solve-to-judge gap needs objective questions with a `reference` answer",
                            where=pair.get("_where") or f"pair {index}",
                            fix="give each pair its reference answer (task:arithmetic pairs have one)")
        question = pair_texts(pair, index)[0]
        records.append({"prompt": [{"role": "user", "content": str(pair.get("question") or question)}]})
    right = [0] * len(pairs)
    for generation in engine.generate(encode_prompts(records, engine.tokenizer), params):
        right[generation.prompt_index] += int(grade(generation.text, pairs[generation.prompt_index]["reference"])[1])
    return [(count, params.n) for count in right]


def gap_metrics(rows: Sequence[dict], solved: Sequence[tuple[int, int]], m: int) -> dict:
    """The metrics of the module docstring from judged rows (``pair_index``, ``sample_index``, ``order``,
    ``correct``, ``verdict``, ``own_correct``, ``spurious``) and per-pair solve counts."""
    solvable = [right >= m for right, _ in solved]
    unsolved = [right == 0 for right, _ in solved]
    on_solvable = [row for row in rows if solvable[row["pair_index"]]]
    on_unsolved = [row for row in rows if unsolved[row["pair_index"]]]
    judged = group_metrics(rows)
    metrics = {
        "pairs": len(solved), "judgments": len(rows),
        "judge_accuracy": judged["accuracy"],
        **{key: judged[key] for key in ("accuracy_first", "accuracy_swapped", "consistent_accuracy",
                                        "position_flip_rate", "format_failure_rate")},
        "solve_accuracy": _rate(sum(right for right, _ in solved), sum(k for _, k in solved)),
        "solvable_fraction": _rate(sum(solvable), len(solved)),
        "judge_accuracy_solvable": _rate(sum(row["correct"] for row in on_solvable), len(on_solvable)),
        "gap": _rate(sum(not row["correct"] for row in on_solvable), len(on_solvable)),
        "judge_accuracy_unsolved": _rate(sum(row["correct"] for row in on_unsolved), len(on_unsolved)),
    }
    own = [row for row in rows if row.get("own_correct") is not None]
    if own:
        own_wrong = [row for row in own if not row["own_correct"]]
        own_right = [row for row in own if row["own_correct"]]
        metrics.update(
            own_solve_accuracy=_rate(len(own_right), len(own)),
            judge_accuracy_own_wrong=_rate(sum(row["correct"] for row in own_wrong), len(own_wrong)),
            judge_accuracy_own_right=_rate(sum(row["correct"] for row in own_right), len(own_right)),
        )
    checked = [row for row in rows if row.get("spurious") is not None]
    metrics["spurious_success_rate"] = _rate(sum(row["spurious"] for row in checked), len(checked))
    return metrics


def judge_rows(engine: RolloutEngine, pairs: Sequence[dict], template_name: str, params: SamplingParams,
               similarity=None, threshold: float | None = None) -> list[dict]:
    """Both-order judgments, rescored under the GRM rules when the template is ``grm`` or ``s2j``, with the
    judge's own solution checked (``own_correct``) and its critique compared (``spurious``)."""
    template = resolve_template(template_name, "pairwise")
    rows = judge_pairs(engine, pairs, template, params).rows
    grm = template.name in ("grm", "s2j")
    limit = None if similarity is None else (similarity.default_threshold if threshold is None else threshold)
    for row in rows:
        pair = pairs[row["pair_index"]]
        row["own_correct"] = row["spurious"] = None
        if grm:
            output = parsed(row["output"], template.name)
            row["verdict"] = output.choice if output.valid else None
            row["format_error"] = output.error
            row["correct"] = output.valid and output.choice == RIGHT_VERDICT[row["order"]]
            if template.name == "s2j" and output.solve:
                row["own_correct"] = grade(output.solve, pair["reference"])[1]
            critique = output.arguments
        else:
            critique = row["output"]
        if similarity is not None and row["correct"] and pair.get("critique") and critique:
            row["similarity"] = similarity.scores([critique], [pair["critique"]])[0]
            row["spurious"] = not quantize(row["similarity"], limit)
    return rows


class GapOptions(EngineOptions):
    """``posttrain eval gap``: ``n`` pairs (None: all), ``k`` solve-only samples per question at
    ``solve_temperature``, solvable with ``m`` of ``k`` right (None: ``k``); the judge ``template``; the critique
    ``similarity`` backend (None or ``"none"``: no spurious-success check) and its ``threshold``."""

    model: str = "smollm2-135m"
    data: str = "task:arithmetic"
    n: int | None = 40
    k: int = 4
    m: int | None = None
    template: str = "s2j"
    solve_temperature: float = 1.0
    max_new_tokens: int = 256
    judge_max_new_tokens: int = 384
    similarity: str | None = "numbers"
    threshold: float | None = None
    batch_size: int = 16
    seed: int = 0
    out_dir: Path | None = None

    @field_validator("similarity")
    @classmethod
    def _no_similarity(cls, value: str | None) -> str | None:
        return None if value == "none" else value


def run_gap_eval(options: GapOptions, engine: RolloutEngine | None = None) -> dict:
    """``posttrain eval gap`` (module docstring), on ``engine`` (default: ``model`` loaded); with ``out_dir``
    writes ``gap.json`` and ``samples.jsonl``."""
    k = options.k
    m = k if options.m is None else options.m
    if not 1 <= m <= k:
        raise DataError(f"m = {m} must lie in [1, k = {k}]", where="--m", fix="give 1 <= m <= k")
    pairs = preference_pairs(options.data, options.n, options.seed)
    if engine is None:
        engine = tool_engine(options.model, options.engine, batch_size=options.batch_size)
    solved = solve_counts(engine, pairs, SamplingParams(temperature=options.solve_temperature,
                                                        max_new_tokens=options.max_new_tokens, n=k, seed=options.seed))
    backend = build_similarity(options.similarity) if options.similarity else None
    rows = judge_rows(engine, pairs, options.template,
                      SamplingParams(temperature=0.0, max_new_tokens=options.judge_max_new_tokens),
                      backend, options.threshold)
    for row in rows:
        row["solve_right"], row["solve_k"] = solved[row["pair_index"]]
    summary = {"model": options.model, "data": options.data, "template": options.template, "k": k, "m": m,
               "similarity": options.similarity, **gap_metrics(rows, solved, m)}
    write_eval(options.out_dir, "gap", summary, rows)
    return summary


def gap_from_samples(path: Path, m: int | None = None) -> dict:
    """The metrics recomputed from the ``samples.jsonl`` of an earlier ``posttrain eval gap`` (its judged rows
    with each pair's solve counts) at another ``m``: no generation. ``m`` defaults to the run's ``k``."""
    needed = ("pair_index", "correct", "verdict", "solve_right", "solve_k")
    rows, solved = [], {}
    for where, row in read_jsonl_objects(path):
        missing = [key for key in needed if key not in row]
        if missing:
            raise DataError(f"missing {', '.join(missing)}", where=where,
                            fix="pass the samples.jsonl that posttrain eval gap --out wrote")
        rows.append(row)
        solved[row["pair_index"]] = (row["solve_right"], row["solve_k"])
    if not rows or sorted(solved) != list(range(len(solved))):
        raise DataError("no judged rows, or pair indices with holes", where=str(path),
                        fix="pass the samples.jsonl that posttrain eval gap --out wrote")
    k = min(count for _, count in solved.values())
    m = k if m is None else m
    if not 1 <= m <= k:
        raise DataError(f"m = {m} must lie in [1, k = {k}]", where="--m", fix="give 1 <= m <= k")
    return {"samples": str(path), "k": k, "m": m, **gap_metrics(rows, [solved[i] for i in range(len(solved))], m)}


def format_gap_table(result: dict) -> str:
    """The metrics as aligned ``name  value`` lines (``-`` where undefined)."""
    keys = [key for key in result if key not in ("model", "data", "template", "similarity", "samples")]
    width = max(len(key) for key in keys)
    lines = ([f"{result['model']} on {result['data']} ({result['template']} template)"] if "model" in result
             else [f"recomputed from {result['samples']}"])
    for key in keys:
        value = result[key]
        shown = "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)
