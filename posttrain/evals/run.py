"""Command-level evaluation entry points: load a model and data, run an evaluation, return figures."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.data import encode_prompt, prompt_text, source_records, write_jsonl
from posttrain.errors import DataError
from posttrain.evals.math import evaluate_math
from posttrain.models import load_model, load_tokenizer
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import EvalOptions


def prompt_records(data: str, n: int | None, seed: int = 0, split: str = "held_out") -> list[dict]:
    """Prompt records with reference answers from a data file, or ``task:NAME`` (its ``split``: held-out
    questions for evaluation, training ones for making training data)."""
    records = source_records(data, "prompt", n, seed, split)
    require_references(records)
    return records


def require_references(records: list[dict]) -> None:
    """Every record scored by answer must carry a reference answer; name the first that does not."""
    missing = [r.get("_where", "?") for r in records if r.get("reference") in (None, "")]
    if missing:
        raise DataError(f"{len(missing)} records have no reference answer (first: {missing[0]})",
                        fix="give each record an `answer` (GSM8K style, final answer after ####) or a `reference`")


class MathOptions(EvalOptions):
    """``posttrain eval math``: ``k`` samples per prompt."""

    k: int = 1
    temperature: float = 0.0
    batch_size: int = 32


def run_math_eval(options: MathOptions) -> dict:
    """Math accuracy of ``model`` on ``data`` (:func:`~posttrain.evals.math.evaluate_math`): its metrics,
    ``unparsed_references`` among them. With ``out_dir``: ``samples.jsonl`` and the summary ``math.json``."""
    tokenizer = load_tokenizer(options.model)
    records = prompt_records(options.data, options.n, options.seed)
    engine = tool_engine(options.model, options.engine, batch_size=options.batch_size, tokenizer=tokenizer)
    result = evaluate_math(engine, [encode_prompt(r, tokenizer) for r in records],
                           [str(r["reference"]) for r in records], k=options.k, params=options.sampling(options.k),
                           prompts_text=[prompt_text(r) for r in records], out_dir=options.out_dir)
    summary = {"model": options.model, "data": options.data, **result.to_dict()}
    write_summary(options.out_dir, "math", summary)
    return summary


def generate_replies(model: str, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0, n: int = 1,
                     seed: int = 0) -> list[str]:
    tokenizer = load_tokenizer(model)
    engine = HFEngine(load_model(model), tokenizer, batch_size=n)
    record = {"prompt": [{"role": "user", "content": prompt}]}
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, n=n, seed=seed)
    return [g.text for g in engine.generate([encode_prompt(record, tokenizer)], params)]


def write_eval(out_dir: str | Path | None, name: str, summary: dict, rows: list[dict]) -> None:
    """With ``out_dir``: ``<name>.json`` (the summary, indented) and ``samples.jsonl`` (one row a sample)."""
    if out_dir is None:
        return
    write_jsonl(rows, Path(out_dir) / "samples.jsonl")
    write_summary(out_dir, name, summary)


def write_summary(out_dir: str | Path | None, name: str, summary: dict) -> None:
    """With ``out_dir``: the summary as ``<name>.json``, indented."""
    if out_dir is None:
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
