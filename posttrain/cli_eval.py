"""``posttrain eval ...``: the evaluation commands. Each builds its evaluation's options object from its parameters
(:func:`tool_options`) and calls one function of :mod:`posttrain.evals`; results print as a table or, with
``--json``, as one JSON object. A parameter named like a field of the options object sets that field (its flag
may be spelled otherwise, e.g. ``--out`` for ``out_dir``); the defaults are the options object's, which
``tests/test_options.py`` checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate models.")

# options several commands share
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON object")]
ModelName = Annotated[str, typer.Option(help="model name or directory")]
Temperature = Annotated[float, typer.Option(help="0 = greedy")]
Engine = Annotated[str, typer.Option(help="rollout engine: hf (model.generate), vllm, or auto (vllm when installed "
                                          "and the model is a folder it supports, else hf)")]
ReservedToken = Annotated[str | None, typer.Option("--reserved-token",
                                                   help="reserved token z_c (default: chosen per tokenizer)")]


def out_option(help_text: str):
    """The ``--out`` flag of a command, setting its options' ``out_dir``."""
    return typer.Option("--out", help=help_text)


def tool_options(context: typer.Context, options_class):
    """The options object of ``options_class`` from the command's parameters: each parameter named as one of its
    fields sets that field; a value the object refuses is a :class:`~posttrain.errors.ConfigError` naming the
    flag."""
    flags = {param.name: param.opts[0] for param in context.command.params if param.opts}
    values = {name: value for name, value in context.params.items() if name in options_class.model_fields}
    return options_class.parse(values, where=lambda key: flags.get(key, key))


@eval_app.command("math")
def eval_math(
    context: typer.Context,
    model: ModelName = "smollm2-135m",
    data: Annotated[str, typer.Option(help="data file/directory, or task:arithmetic for the synthetic task")] = "task:arithmetic",
    n: Annotated[int | None, typer.Option(help="number of prompts (default: all)")] = None,
    k: Annotated[int, typer.Option(help="samples per prompt (pass@k)")] = 1,
    temperature: Temperature = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    engine: Engine = "hf",
    seed: int = 0,
    out_dir: Annotated[Path | None, out_option("directory for samples.jsonl and the summary math.json")] = None,
    as_json: AsJson = False,
) -> None:
    """Math accuracy, pass@k, parse failures and mean length of a model on prompts with reference answers.

    References that are not a number or math expression are counted (``unparsed_references``) and warned
    about on stderr; when none is one, the command stops with an error before sampling."""
    from posttrain.evals.run import MathOptions, run_math_eval

    result = run_math_eval(tool_options(context, MathOptions))
    if result["unparsed_references"]:
        typer.echo(f"warning: {result['unparsed_references']} of {result['num_prompts']} reference answers in "
                   f"{data} are not a number or math expression, so their samples may be scored wrong; "
                   "give final answers such as `42` or `\\frac{1}{2}`", err=True)
    _print_result(result, as_json)


def _print_result(result: dict, as_json: bool) -> None:
    """One JSON object, or one aligned ``key: value`` line per entry."""
    if as_json:
        typer.echo(json.dumps(result))
    else:
        for key, value in result.items():
            typer.echo(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")


@eval_app.command("selfreward")
def eval_selfreward(
    context: typer.Context,
    model: ModelName = "smollm2-135m",
    data: Annotated[str, typer.Option(help="data file (records with `completion` are scored as given), or task:NAME")] = "task:arithmetic",
    n: Annotated[int | None, typer.Option(help="number of prompts (default: all)")] = None,
    samples: Annotated[int, typer.Option(help="completions sampled per prompt when the data has none")] = 4,
    c_ref: Annotated[float, typer.Option(help="LaSeR reference constant c_ref")] = -23.0,
    beta_v: Annotated[float, typer.Option(help="LaSeR KL coefficient beta_v")] = 0.1,
    threshold: Annotated[float, typer.Option(help="r_s above this counts as judged correct")] = 0.5,
    token: ReservedToken = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    engine: Engine = "hf",
    seed: int = 0,
    out_dir: Annotated[Path | None, out_option("directory for samples.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """LaSeR self-reward r_s of given or sampled completions: accuracy on correct/incorrect, F1 and AUROC."""
    from posttrain.evals.selfreward import SelfRewardOptions, run_selfreward_eval

    _print_result(run_selfreward_eval(tool_options(context, SelfRewardOptions)), as_json)


@eval_app.command("judge")
def eval_judge(
    context: typer.Context,
    model: Annotated[str, typer.Option(help="judge model (or reward model with --scorer reward_model)")] = "smollm2-135m",
    data: Annotated[str, typer.Option(help="preference file (prompt, chosen, rejected, optional subset; "
                                           "the prompt may be implicit, shared by chosen and rejected), "
                                           "or task:arithmetic for held-out synthetic pairs")] = "task:arithmetic",
    template: Annotated[str, typer.Option(help="judge template: rise, j1 (pairwise), j1_pointwise, pointwise, "
                                               "or a pairwise template file")] = "rise",
    scorer: Annotated[str, typer.Option(help="judge (generative, both orders) or reward_model (scalar score)")] = "judge",
    n: Annotated[int | None, typer.Option(help="number of pairs (default: all)")] = None,
    samples: Annotated[int, typer.Option(help="judgments per pair and order")] = 1,
    votes: Annotated[int, typer.Option(help="sampled judgments per prompt voted into one (majority verdict, mean "
                                            "score); figures with and without voting")] = 1,
    temperature: Temperature = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    engine: Engine = "hf",
    seed: int = 0,
    out_dir: Annotated[Path | None, out_option("directory for judge.json and samples.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """Judge accuracy per order, both-order consistency, flips, format failures; by subset, category, length."""
    from posttrain.evals.judge import JudgeEvalOptions, format_judge_table, run_judge_eval

    result = run_judge_eval(tool_options(context, JudgeEvalOptions))
    typer.echo(json.dumps(result) if as_json else format_judge_table(result))


@eval_app.command("masterkey")
def eval_masterkey(
    context: typer.Context,
    model: Annotated[str, typer.Option(help="judge model name or directory")] = "smollm2-135m",
    keys: Annotated[str, typer.Option(help="default, comma-separated key names, or a file with one key a line")] = "default",
    data: Annotated[str, typer.Option(help="prompts with references (task:arithmetic for the pairwise probe)")] = "task:arithmetic",
    n: Annotated[int, typer.Option(help="number of records (0 = all)")] = 50,
    probes: Annotated[str, typer.Option(help="comma-separated: verifier, pairwise (a judge) or reward (a scalar reward model)")] = "verifier,pairwise",
    template: Annotated[str, typer.Option(help="pairwise template: rise, j1, or a template file")] = "rise",
    verifier_template: Annotated[str, typer.Option(help="verifier template: verifier, or a template file")] = "verifier",
    samples: Annotated[int, typer.Option(help="judgments per prompt")] = 1,
    temperature: Temperature = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    engine: Engine = "hf",
    seed: int = 0,
    out_dir: Annotated[Path | None, out_option("directory for masterkey.json and samples.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """False-positive rate of a judge on master-key responses, per key and overall, verifier and pairwise."""
    from posttrain.evals.masterkey import MasterkeyOptions, format_masterkey_table, run_masterkey_eval

    result = run_masterkey_eval(tool_options(context, MasterkeyOptions))
    typer.echo(json.dumps(result) if as_json else format_masterkey_table(result))


@eval_app.command("gap")
def eval_gap(
    context: typer.Context,
    model: Annotated[str, typer.Option("--judge", help="the generative judge (model name or directory)")] = "smollm2-135m",
    data: Annotated[str, typer.Option(help="pairs of objective questions with a reference answer, or "
                                           "task:arithmetic for held-out synthetic pairs")] = "task:arithmetic",
    n: Annotated[int | None, typer.Option(help="number of pairs (default: all)")] = 40,
    k: Annotated[int, typer.Option(help="solve-only samples per question")] = 4,
    m: Annotated[int | None, typer.Option(help="a question is solvable with at least m of k right (default k)")] = None,
    template: Annotated[str, typer.Option(help="judge template: s2j, grm, rise, j1 or a template file")] = "s2j",
    solve_temperature: float = 1.0,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per solve-only answer")] = 256,
    judge_max_new_tokens: Annotated[int, typer.Option(help="tokens per judgment")] = 384,
    similarity: Annotated[str, typer.Option(help="critique similarity backend for spurious successes: numbers "
                                                 "(arithmetic critiques), lexical, embedding, llm, or none")] = "numbers",
    threshold: Annotated[float | None, typer.Option(help="similarity threshold (default: the backend's)")] = None,
    batch_size: int = 16,
    engine: Engine = "hf",
    seed: int = 0,
    out_dir: Annotated[Path | None, out_option("directory for gap.json and samples.jsonl")] = None,
    samples: Annotated[Path | None, typer.Option(help="recompute the metrics (at --m) from the samples.jsonl of an "
                                                     "earlier run instead of generating")] = None,
    as_json: AsJson = False,
) -> None:
    """Solve-to-judge gap: judge accuracy on questions the model solves itself, and spurious successes."""
    from posttrain.evals.gap import GapOptions, format_gap_table, gap_from_samples, run_gap_eval

    result = gap_from_samples(samples, m) if samples is not None else run_gap_eval(tool_options(context, GapOptions))
    typer.echo(json.dumps(result) if as_json else format_gap_table(result))


@eval_app.command("critique-agreement")
def eval_critique_agreement(
    context: typer.Context,
    data: Annotated[Path, typer.Option(help="jsonl with `generated` and `reference` critiques")],
    backends: Annotated[str, typer.Option(help="comma-separated: lexical, numbers, embedding, llm")] = "lexical,numbers,embedding",
    judge_model: Annotated[str | None, typer.Option(help="the llm backend's judge model")] = None,
    thresholds: Annotated[list[str] | None, typer.Option("--threshold", help="NAME=VALUE, a backend's threshold "
                                                                             "(repeatable)")] = None,
    out_dir: Annotated[Path | None, out_option("directory for agreement.json and scores.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """Score critique pairs with several similarity backends; report each one's rate and their agreement."""
    from posttrain.judges.similarity import AgreementOptions, format_agreement, run_agreement

    result = run_agreement(tool_options(context, AgreementOptions))
    typer.echo(json.dumps(result) if as_json else format_agreement(result))


@eval_app.command("sharpness")
def eval_sharpness(
    context: typer.Context,
    model: Annotated[str, typer.Option(help="model M (e.g. the reheated checkpoint): name or directory")],
    reference: Annotated[str, typer.Option(help="reference R (e.g. the collapsed checkpoint), same tokenizer")],
    data: Annotated[str, typer.Option(help="prompts with reference answers: data file, or task:NAME")],
    contexts: Annotated[str, typer.Option(help="whose T=1 samples both models score: reference or model")] = "reference",
    n: Annotated[int | None, typer.Option(help="number of prompts (0 = all)")] = 32,
    samples: Annotated[int, typer.Option(help="context completions per prompt")] = 1,
    max_new_tokens: int = 96,
    k: Annotated[int, typer.Option(help="pass@k of both models (k samples per prompt at T=1)")] = 8,
    batch_size: Annotated[int, typer.Option(help="sequences per generate call")] = 16,
    seed: int = 0,
    out_dir: Annotated[Path | None, out_option("directory for sharpness.json (default: <M>/eval/sharpness for a "
                                               "directory M, else runs/sharpness)")] = None,
    as_json: AsJson = False,
) -> None:
    """Sharpness of M against R on the same contexts: entropy, max-prob, top-k overlap, layer cosines, T-hat, pass@k."""
    from posttrain.evals.sharpness import SharpnessOptions, run_sharpness_eval

    result = run_sharpness_eval(tool_options(context, SharpnessOptions))
    if not as_json:
        result = {key: " ".join(f"{item:.4f}" for item in value) if isinstance(value, list) else value
                  for key, value in result.items()}
    _print_result(result, as_json)


@eval_app.command("bon")
def eval_bon(
    context: typer.Context,
    model: ModelName = "smollm2-135m",
    data: Annotated[str, typer.Option(help="data file/directory, or task:arithmetic for the synthetic task")] = "task:arithmetic",
    ns: Annotated[str, typer.Option("--n", help="comma-separated N values")] = "1,2,4,8,16",
    selectors: Annotated[str, typer.Option("--select", help="comma-separated selectors: random, majority, "
                                           "self_certainty, laser, laser_weighted_majority, judge")] = "random,majority,self_certainty,laser,laser_weighted_majority",
    prompts: Annotated[int | None, typer.Option(help="number of prompts (default: all)")] = None,
    draws: Annotated[int, typer.Option(help="random reshuffles of each prompt's samples")] = 20,
    c_ref: Annotated[float, typer.Option(help="LaSeR reference constant c_ref")] = -23.0,
    beta_v: Annotated[float, typer.Option(help="LaSeR KL coefficient beta_v")] = 0.1,
    token: ReservedToken = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    engine: Engine = "hf",
    seed: int = 0,
    judge: Annotated[str | None, typer.Option(help="judge model for the judge selector (pointwise scores)")] = None,
    judge_template: Annotated[str, typer.Option(help="pointwise judge template")] = "pointwise",
    out_dir: Annotated[Path | None, out_option("directory for bon.json, bon.png and samples.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """Best-of-N accuracy against N per selector, from max(N) samples per prompt drawn once."""
    from posttrain.evals.bon import BonOptions, run_bon_eval

    options = tool_options(context, BonOptions)
    result = run_bon_eval(options)
    if as_json:
        typer.echo(json.dumps(result))
        return
    names = list(result["accuracy"])
    typer.echo(f"{result['num_prompts']} prompts x {result['samples_per_prompt']} samples, "
               f"mean accuracy {result['mean_accuracy']:.4g}")
    typer.echo("N".rjust(4) + "".join(name.rjust(max(len(name), 8) + 2) for name in names))
    for value in options.ns:
        cells = "".join(f"{result['accuracy'][name][str(value)]:.4f}".rjust(max(len(name), 8) + 2) for name in names)
        typer.echo(f"{value:>4}{cells}")
