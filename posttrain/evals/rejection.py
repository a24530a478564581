"""Rejection sampling: the model's own correct solutions as SFT data ("in-style" targets).

For every prompt of ``data`` (a file, or ``task:NAME``'s training split), ``k`` completions are sampled from
``model``; their final answers are graded against the record's reference (the grading of
:mod:`posttrain.evals.math`), and up to ``keep`` correct completions with distinct text become SFT records
``{prompt, completion}``. This is rejection-sampling fine-tuning's data step (RFT, Yuan et al. 2023, "Scaling
Relationship on Learning Mathematical Reasoning with Large Language Models"; STaR, Zelikman et al. 2022, without
its rationalization): targets written in the model's own style, which is the setting ProFit's premise describes
(its low-probability target tokens are style the model would not produce; methods.md §2.1).

Prompts with no correct sample contribute nothing (``summary.json`` counts them), so the set leans to the
prompts the model already solves; that is the method, and the count says how strongly.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.data import encode_prompt, prompt_text, write_jsonl
from posttrain.errors import DataError
from posttrain.evals.math import score_generation
from posttrain.evals.run import prompt_records, write_summary
from posttrain.grading import reference_answer
from posttrain.models import load_tokenizer
from posttrain.rollout import Generation, RolloutEngine, SamplingParams
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import EvalOptions


class RejectionOptions(EvalOptions):
    """``posttrain data rejection-sample``: ``k`` samples per prompt at ``temperature``, at most ``keep`` distinct
    correct ones kept per prompt, prompts from ``split`` (``train`` by default: this makes training data)."""

    k: int = 4
    keep: int = 1
    temperature: float = 1.0
    max_new_tokens: int = 256
    split: str = "train"
    batch_size: int = 32


def correct_completions(generations: list[Generation], correct: list[bool], keep: int) -> dict[int, list[str]]:
    """Per prompt index: up to ``keep`` completion texts, in sampling order, of the generations graded correct
    (``correct[i]`` for ``generations[i]``), no text twice."""
    kept: dict[int, list[str]] = {}
    order = sorted(range(len(generations)), key=lambda i: (generations[i].prompt_index, generations[i].sample_index))
    for index in order:
        generation = generations[index]
        texts = kept.setdefault(generation.prompt_index, [])
        if correct[index] and len(texts) < keep and generation.text not in texts:
            texts.append(generation.text)
    return kept


def rejection_sample(engine: RolloutEngine, records: list[dict], tokenizer, params: SamplingParams,
                     keep: int) -> tuple[list[dict], dict]:
    """SFT records from the correct samples of ``params.n`` per record, and the counts (module docstring)."""
    if keep < 1:
        raise DataError(f"keep = {keep} keeps nothing", where="keep", fix="keep at least one correct sample")
    references = [reference_answer(str(record["reference"])) for record in records]
    generations = engine.generate([encode_prompt(record, tokenizer) for record in records], params)
    correct = [bool(score_generation(g, references[g.prompt_index])["correct"]) for g in generations]
    kept = correct_completions(generations, correct, keep)
    sft = [{"prompt": record["prompt"] if isinstance(record["prompt"], list)
            else [{"role": "user", "content": prompt_text(record)}],
            "completion": [{"role": "assistant", "content": text}], "reference": str(record["reference"]),
            "prompt_index": index}
           for index, record in enumerate(records) for text in kept.get(index, [])]
    summary = {"prompts": len(records), "samples_per_prompt": params.n, "samples": len(generations),
               "correct_rate": sum(correct) / max(len(generations), 1),
               "prompts_with_a_correct_sample": sum(bool(texts) for texts in kept.values()),
               "records": len(sft)}
    return sft, summary


def run_rejection_sampling(options: RejectionOptions) -> dict:
    """``posttrain data rejection-sample`` and the pipeline's ``rejection_sample`` stage: write ``sft.jsonl`` and
    ``summary.json`` into ``out_dir``."""
    if options.out_dir is None:
        raise DataError("rejection sampling writes sft.jsonl and needs a folder", where="out_dir",
                        fix="give --out-dir (a pipeline stage writes into its own folder)")
    tokenizer = load_tokenizer(options.model)
    records = prompt_records(options.data, options.n, options.seed, split=options.split)
    engine = tool_engine(options.model, options.engine, batch_size=options.batch_size, tokenizer=tokenizer)
    sft, summary = rejection_sample(engine, records, tokenizer, options.sampling(options.k), options.keep)
    if not sft:
        raise DataError(f"none of the {summary['samples']} samples of {options.model} on {options.data} is correct, "
                        "so there is no SFT data", where=options.data,
                        fix="sample more (k), at another temperature, or from a stronger model")
    write_jsonl(sft, Path(options.out_dir) / "sft.jsonl")
    summary = {"model": options.model, "data": options.data, "split": options.split, **summary}
    write_summary(options.out_dir, "summary", summary)
    return summary
