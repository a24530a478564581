"""``posttrain eval ...``: the evaluation commands. Each parses its arguments and calls one function of
:mod:`posttrain.evals`; results print as a table or, with ``--json``, as one JSON object."""

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


@eval_app.command("math")
def eval_math(
    model: ModelName = "smollm2-135m",
    data: Annotated[str, typer.Option(help="data file/directory, or task:arithmetic for the synthetic task")] = "task:arithmetic",
    n: Annotated[int | None, typer.Option(help="number of prompts (default: all)")] = None,
    k: Annotated[int, typer.Option(help="samples per prompt (pass@k)")] = 1,
    temperature: Temperature = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="directory for samples.jsonl and the summary math.json")] = None,
    as_json: AsJson = False,
) -> None:
    """Math accuracy, pass@k, parse failures and mean length of a model on prompts with reference answers.

    References that are not a number or math expression are counted (``unparsed_references``) and warned
    about on stderr; when none is one, the command stops with an error before sampling."""
    from posttrain.evals.run import run_math_eval

    result = run_math_eval(model=model, data=data, n=n, k=k, temperature=temperature, top_p=top_p,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, out_dir=out)
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


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@eval_app.command("selfreward")
def eval_selfreward(
    model: ModelName = "smollm2-135m",
    data: Annotated[str, typer.Option(help="data file (records with `completion` are scored as given), or task:NAME")] = "task:arithmetic",
    n: Annotated[int | None, typer.Option(help="number of prompts (default: all)")] = None,
    samples: Annotated[int, typer.Option(help="completions sampled per prompt when the data has none")] = 4,
    c_ref: Annotated[float, typer.Option(help="LaSeR reference constant c_ref")] = -23.0,
    beta_v: Annotated[float, typer.Option(help="LaSeR KL coefficient beta_v")] = 0.1,
    threshold: Annotated[float, typer.Option(help="r_s above this counts as judged correct")] = 0.5,
    reserved_token: Annotated[str | None, typer.Option(help="reserved token z_c (default: chosen per tokenizer)")] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="directory for samples.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """LaSeR self-reward r_s of given or sampled completions: accuracy on correct/incorrect, F1 and AUROC."""
    from posttrain.evals.selfreward import run_selfreward_eval

    result = run_selfreward_eval(model=model, data=data, n=n, samples=samples, c_ref=c_ref, beta_v=beta_v,
                                 threshold=threshold, token=reserved_token, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, out_dir=out)
    _print_result(result, as_json)


@eval_app.command("judge")
def eval_judge(
    model: Annotated[str, typer.Option(help="judge model (or reward model with --scorer reward_model)")] = "smollm2-135m",
    data: Annotated[str, typer.Option(help="preference file (prompt, chosen, rejected, optional subset), "
                                           "or task:arithmetic for held-out synthetic pairs")] = "task:arithmetic",
    template: Annotated[str, typer.Option(help="pairwise judge template: rise, j1, or a template file")] = "rise",
    scorer: Annotated[str, typer.Option(help="judge (generative, both orders) or reward_model (scalar score)")] = "judge",
    n: Annotated[int | None, typer.Option(help="number of pairs (default: all)")] = None,
    samples: Annotated[int, typer.Option(help="judgments per pair and order")] = 1,
    temperature: Temperature = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="directory for judge.json and samples.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """Judge accuracy per order, both-order consistency, flips, format failures; by subset, category, length."""
    from posttrain.evals.judge import format_judge_table, run_judge_eval

    result = run_judge_eval(model=model, data=data, template=template, scorer=scorer, n=n, samples=samples,
                            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, seed=seed, out_dir=out)
    typer.echo(json.dumps(result) if as_json else format_judge_table(result))


@eval_app.command("masterkey")
def eval_masterkey(
    model: Annotated[str, typer.Option(help="judge model name or directory")] = "smollm2-135m",
    keys: Annotated[str, typer.Option(help="default, comma-separated key names, or a file with one key a line")] = "default",
    data: Annotated[str, typer.Option(help="prompts with references (task:arithmetic for the pairwise probe)")] = "task:arithmetic",
    n: Annotated[int, typer.Option(help="number of records (0 = all)")] = 50,
    probes: Annotated[str, typer.Option(help="comma-separated: verifier, pairwise")] = "verifier,pairwise",
    template: Annotated[str, typer.Option(help="pairwise template: rise, j1, or a template file")] = "rise",
    verifier_template: Annotated[str, typer.Option(help="verifier template: verifier, or a template file")] = "verifier",
    samples: Annotated[int, typer.Option(help="judgments per prompt")] = 1,
    temperature: Temperature = 0.0,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="directory for masterkey.json and samples.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """False-positive rate of a judge on master-key responses, per key and overall, verifier and pairwise."""
    from posttrain.evals.masterkey import format_masterkey_table, run_masterkey_eval

    result = run_masterkey_eval(model=model, data=data, n=n or None, keys=keys, probes=_comma_list(probes),
                                template=template, verifier_template=verifier_template, samples=samples,
                                temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                seed=seed, out_dir=out)
    typer.echo(json.dumps(result) if as_json else format_masterkey_table(result))


@eval_app.command("gap")
def eval_gap(
    judge: Annotated[str, typer.Option(help="the generative judge (model name or directory)")] = "smollm2-135m",
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
    seed: int = 0,
    out: Annotated[Path | None, typer.Option(help="directory for gap.json and samples.jsonl")] = None,
    samples: Annotated[Path | None, typer.Option(help="recompute the metrics (at --m) from the samples.jsonl of an "
                                                     "earlier run instead of generating")] = None,
    as_json: AsJson = False,
) -> None:
    """Solve-to-judge gap: judge accuracy on questions the model solves itself, and spurious successes."""
    from posttrain.evals.gap import format_gap_table, gap_from_samples, run_gap_eval

    if samples is not None:
        result = gap_from_samples(samples, m)
        typer.echo(json.dumps(result) if as_json else format_gap_table(result))
        return
    result = run_gap_eval(model=judge, data=data, n=n, k=k, m=m, template=template,
                          solve_temperature=solve_temperature, max_new_tokens=max_new_tokens,
                          judge_max_new_tokens=judge_max_new_tokens,
                          similarity=None if similarity == "none" else similarity, threshold=threshold,
                          batch_size=batch_size, seed=seed, out_dir=out)
    typer.echo(json.dumps(result) if as_json else format_gap_table(result))


@eval_app.command("critique-agreement")
def eval_critique_agreement(
    data: Annotated[Path, typer.Option(help="jsonl with `generated` and `reference` critiques")],
    backends: Annotated[str, typer.Option(help="comma-separated: lexical, numbers, embedding, llm")] = "lexical,numbers,embedding",
    judge_model: Annotated[str | None, typer.Option(help="the llm backend's judge model")] = None,
    threshold: Annotated[list[str] | None, typer.Option(help="NAME=VALUE, a backend's threshold (repeatable)")] = None,
    out: Annotated[Path | None, typer.Option(help="directory for agreement.json and scores.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """Score critique pairs with several similarity backends; report each one's rate and their agreement."""
    from posttrain.judges.similarity import format_agreement, run_agreement

    result = run_agreement(data, _comma_list(backends), judge_model=judge_model, thresholds=threshold or [],
                           out_dir=out)
    typer.echo(json.dumps(result) if as_json else format_agreement(result))


@eval_app.command("sharpness")
def eval_sharpness(
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
    out: Annotated[Path | None, typer.Option(help="directory for sharpness.json (default: <M>/eval/sharpness "
                                                  "for a directory M, else runs/sharpness)")] = None,
    as_json: AsJson = False,
) -> None:
    """Sharpness of M against R on the same contexts: entropy, max-prob, top-k overlap, layer cosines, T-hat, pass@k."""
    from posttrain.evals.sharpness import run_sharpness_eval

    result = run_sharpness_eval(model=model, reference=reference, data=data, contexts=contexts, n=n or None,
                                samples=samples, max_new_tokens=max_new_tokens, k=k, seed=seed, out_dir=out,
                                batch_size=batch_size)
    if not as_json:
        result = {key: " ".join(f"{item:.4f}" for item in value) if isinstance(value, list) else value
                  for key, value in result.items()}
    _print_result(result, as_json)


@eval_app.command("bon")
def eval_bon(
    model: ModelName = "smollm2-135m",
    data: Annotated[str, typer.Option(help="data file/directory, or task:arithmetic for the synthetic task")] = "task:arithmetic",
    n: Annotated[str, typer.Option(help="comma-separated N values")] = "1,2,4,8,16",
    select: Annotated[str, typer.Option(help="comma-separated selectors: random, majority, self_certainty, laser, "
                                             "laser_weighted_majority, judge")] = "random,majority,self_certainty,laser,laser_weighted_majority",
    prompts: Annotated[int | None, typer.Option(help="number of prompts (default: all)")] = None,
    draws: Annotated[int, typer.Option(help="random reshuffles of each prompt's samples")] = 20,
    c_ref: Annotated[float, typer.Option(help="LaSeR reference constant c_ref")] = -23.0,
    beta_v: Annotated[float, typer.Option(help="LaSeR KL coefficient beta_v")] = 0.1,
    reserved_token: Annotated[str | None, typer.Option(help="reserved token z_c (default: chosen per tokenizer)")] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    judge: Annotated[str | None, typer.Option(help="judge model for the judge selector (pointwise scores)")] = None,
    judge_template: Annotated[str, typer.Option(help="pointwise judge template")] = "pointwise",
    out: Annotated[Path | None, typer.Option(help="directory for bon.json, bon.png and samples.jsonl")] = None,
    as_json: AsJson = False,
) -> None:
    """Best-of-N accuracy against N per selector, from max(N) samples per prompt drawn once."""
    from posttrain.errors import ConfigError
    from posttrain.evals.bon import run_bon_eval

    try:
        ns = sorted({int(value) for value in _comma_list(n)})
    except ValueError:
        raise ConfigError(f"--n {n!r} is not a list of integers", where="--n", fix="write e.g. --n 1,2,4,8") from None
    result = run_bon_eval(model=model, data=data, ns=ns, selectors=_comma_list(select), prompts=prompts,
                          temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, draws=draws, seed=seed, c_ref=c_ref, beta_v=beta_v,
                          token=reserved_token, judge=judge, judge_template=judge_template, out_dir=out)
    if as_json:
        typer.echo(json.dumps(result))
        return
    names = list(result["accuracy"])
    typer.echo(f"{result['num_prompts']} prompts x {result['samples_per_prompt']} samples, "
               f"mean accuracy {result['mean_accuracy']:.4g}")
    typer.echo("N".rjust(4) + "".join(name.rjust(max(len(name), 8) + 2) for name in names))
    for value in ns:
        cells = "".join(f"{result['accuracy'][name][str(value)]:.4f}".rjust(max(len(name), 8) + 2) for name in names)
        typer.echo(f"{value:>4}{cells}")
