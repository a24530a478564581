"""The ``posttrain`` command. Each sub-command parses its arguments and calls one function; the ``eval``
sub-commands are in :mod:`posttrain.cli_eval`, the ``bench`` ones in :mod:`posttrain.cli_bench`.

A :class:`posttrain.errors.PosttrainError` or a usage mistake (an unknown option or command, a missing or
malformed value) is printed in a line or two without a traceback and exits with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from posttrain.cli_bench import bench_app
from posttrain.cli_eval import Engine, eval_app, out_option, tool_options
from posttrain.errors import ConfigError, PosttrainError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Post-training for language models.")
data_app = typer.Typer(no_args_is_help=True, help="Make and inspect datasets.")
model_app = typer.Typer(no_args_is_help=True, help="Inspect and export models.")
judge_app = typer.Typer(no_args_is_help=True, help="Make judge training data.")
rollout_app = typer.Typer(no_args_is_help=True, help="Serve a rollout engine for learners in other processes.")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(judge_app, name="judge")
app.add_typer(rollout_app, name="rollout")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe, e.g. posttrain/recipes/quickstart.yaml; - for defaults")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides")] = None,
) -> None:
    """Train with a recipe; writes runs/<name>/ (config, metrics, checkpoints, report)."""
    from posttrain.config import load_config
    from posttrain.report import read_run
    from posttrain.report.chain import chain_table
    from posttrain.trainers.run import train as run_training

    options = [arg for arg in (str(recipe), *(overrides or [])) if arg.startswith("--")]
    if options:  # unknown options reach here as arguments (overrides are free-form)
        raise ConfigError(f"`posttrain train` has no option {options[0]}",
                          fix="give a recipe and key.sub=value overrides, e.g. `posttrain train RECIPE "
                              "train.max_steps=20` (see `posttrain train --help`)")
    config = load_config(None if str(recipe) == "-" else recipe, overrides or [])
    result = run_training(config)
    run_dir = result.run_dir
    typer.echo(f"\nrun:        {run_dir}\nmetrics:    {run_dir / 'metrics.jsonl'}\n"
               f"report:     {run_dir / 'report.html'}\ncheckpoint: {run_dir / 'checkpoints'}")
    if result.eval_metrics:
        typer.echo("final eval: " + "  ".join(f"{k}={v:.4g}" for k, v in result.eval_metrics.items()))
        table = chain_table([read_run(run_dir, run_dir.name)])
        if table:
            typer.echo(f"\n{table}")


@app.command()
def sweep(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe")],
    grid: Annotated[list[str], typer.Option(help="axis key=v1,v2 (repeat for a product)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key.sub=value overrides for every run")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Run a recipe over a grid of overrides (runs that already finished are kept) and summarize."""
    from posttrain.trainers.sweep import run_sweep, summarize_runs

    run_dirs = run_sweep(recipe, grid, overrides or [])
    rows = summarize_runs(run_dirs)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        metrics = "  ".join(f"{k[:-5]}={row[k]:.3f}±{row[k[:-5] + '_std']:.3f}" for k in row if k.endswith("_mean"))
        typer.echo(f"{', '.join(row['runs'])}\n    {metrics}")


@app.command()
def pipeline(
    file: Annotated[Path, typer.Argument(help="pipeline YAML (stages, sharpness comparisons, figures)")],
    only: Annotated[list[str] | None, typer.Option(
        help="run only these stages: names or patterns such as 'dpo-s*', comma-separated or repeated")] = None,
) -> None:
    """Run a chain of recipes, each stage starting from an earlier one's weights; then compare and plot."""
    from posttrain.trainers.pipeline import run_pipeline

    root = run_pipeline(file, only)
    typer.echo(f"\npipeline runs, sharpness comparisons and figures: {root}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Option(help="user message")],
    model: str = "smollm2-135m",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    n: int = 1,
    seed: int = 0,
) -> None:
    """Generate a reply to one prompt (chat template applied) for a quick look."""
    from posttrain.evals.run import generate_replies

    for text in generate_replies(model, prompt, max_new_tokens=max_new_tokens, temperature=temperature, n=n, seed=seed):
        typer.echo(text)


@data_app.command("make")
def data_make(
    task: Annotated[str, typer.Argument(help="synthetic task name, e.g. arithmetic")],
    out: Annotated[Path, typer.Option(help="output .jsonl")],
    n: Annotated[int, typer.Option(help="number of records, at least 1")] = 2000,
    seed: int = 0,
    levels: Annotated[str | None, typer.Option(help="comma-separated difficulty levels, e.g. 1,2")] = None,
    held_out: Annotated[bool, typer.Option(help="write the held-out split instead of the training split")] = False,
) -> None:
    """Write a seeded synthetic task as JSONL (question, answer with #### final answer, reference)."""
    from posttrain.data import make_task_file

    options = {"levels": levels} if levels else {}
    path = make_task_file(task, n=n, seed=seed, out=out, split="held_out" if held_out else "train", **options)
    typer.echo(f"wrote {n} records to {path}")


@data_app.command("rejection-sample")
def data_rejection_sample(
    context: typer.Context,
    out_dir: Annotated[Path, out_option("directory for sft.jsonl and summary.json")],
    model: Annotated[str, typer.Option(help="model name or directory that writes the samples")] = "smollm2-135m",
    data: Annotated[str, typer.Option(help="prompt file with references, or task:NAME")] = "task:arithmetic",
    split: Annotated[str, typer.Option(help="task split: train (training data) or held_out")] = "train",
    n: Annotated[int | None, typer.Option(help="number of prompts (default: all; 100 for a task)")] = None,
    k: Annotated[int, typer.Option(help="samples per prompt")] = 4,
    keep: Annotated[int, typer.Option(help="distinct correct samples kept per prompt, at most")] = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 32,
    engine: Engine = "hf",
) -> None:
    """The model's own correct solutions as SFT data (rejection sampling): sft.jsonl and summary.json."""
    from posttrain.evals.rejection import RejectionOptions, run_rejection_sampling

    typer.echo(json.dumps(run_rejection_sampling(tool_options(context, RejectionOptions)), indent=2))


@model_app.command("info")
def model_info_cmd(name: str = typer.Argument("smollm2-135m")) -> None:
    """Parameters, vocabulary, chat template and dtype of a model."""
    from posttrain.models import model_info

    for key, value in model_info(name).items():
        typer.echo(f"{key:>22}: {value}")


@model_app.command("export")
def model_export(checkpoint: Path, out: Path) -> None:
    """Export a checkpoint (runs/NAME/checkpoints/step-N) as a merged HF directory with a model card."""
    from posttrain.models import export_checkpoint

    typer.echo(f"exported to {export_checkpoint(checkpoint, out)}")


@model_app.command("push")
def model_push(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint directory: runs/NAME/checkpoints/step-N")],
    repo_id: Annotated[str, typer.Argument(help="Hugging Face Hub repository: owner/name")],
    out: Annotated[Path | None, typer.Option(help="folder to prepare (default: runs/NAME/hub/step-N)")] = None,
    private: Annotated[bool, typer.Option("--private", help="create the repository private")] = False,
    revision: Annotated[str | None, typer.Option(help="branch to push to, created if missing (default: main)")] = None,
    token: Annotated[str | None, typer.Option(help="token with write access (default: HF_TOKEN or the stored "
                                                   "login)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="prepare the folder and list what would be uploaded")
                       ] = False,
) -> None:
    """Push a checkpoint to the Hugging Face Hub: merged safetensors, tokenizer and a model card."""
    from posttrain.models.push import PushTarget, folder_files, prepare_push_folder, upload_push_folder

    target = PushTarget(repo_id, private=private, revision=revision, token=token)
    folder = prepare_push_folder(checkpoint, repo_id, out)
    where = f"{repo_id}{' (private)' if private else ''}, branch {revision or 'main'}"
    if dry_run:
        typer.echo(f"dry run: would upload {folder} to {where}:")
        for name, size in folder_files(folder):
            typer.echo(f"  {name}  ({size:,} bytes)")
        return
    checkpoint_name = f"{checkpoint.resolve().parent.parent.name}/{checkpoint.resolve().name}"
    url = upload_push_folder(folder, target, commit_message=f"posttrain: {checkpoint_name}")
    typer.echo(f"pushed {folder} to {where}: {url}")


@app.command()
def report(runs: Annotated[list[Path], typer.Argument(help="run directories; several are compared (the settings "
                                                          "that differ, overlaid plots)")],
           out: Annotated[Path | None, typer.Option(help="HTML file (default: report.html in the run; for several "
                                                         "runs compare-<names>.html next to the first)")] = None) -> None:
    """One HTML page: a summary (method, model, data, steps, wall time, tokens/s, eval first → last), the method's
    key plots, the other metrics by prefix, constants as rows."""
    from posttrain.report import default_report_path, write_report

    typer.echo(f"report: {write_report(runs, out or default_report_path(runs))}")


@judge_app.command("synthesize")
def judge_synthesize(
    context: typer.Context,
    judge: Annotated[str, typer.Option(help="judge model name or directory, or `critique` (writes each pair's "
                                            "critique out as a judgment with the right verdict)")],
    pairs: Annotated[str, typer.Option(help="preference file, or task:arithmetic (synthetic training pairs)")],
    k: Annotated[int, typer.Option(help="sampled judgments per pair and order")] = 4,
    out_dir: Annotated[Path, out_option("directory for sft.jsonl, dpo.jsonl, summary.json")] = Path("runs/judge-synthesis"),
    template: Annotated[str, typer.Option(help="pairwise template: rise, j1, or a file")] = "rise",
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 384,
    n: Annotated[int | None, typer.Option(help="number of pairs (default: all; 100 for the task)")] = None,
    seed: int = 0,
    batch_size: int = 16,
    engine: Engine = "hf",
    masterkey_negatives: Annotated[float, typer.Option(help="add this fraction of pairs whose rejected answer is a "
                                                            "master key or the chosen one cut to its first sentence")] = 0.0,
    critique_style: Annotated[str | None, typer.Option(help="the critique judge's format: rise, j1, grm, s2j or "
                                                            "solve_first (default: the template's name)")] = None,
    balance_orders: Annotated[bool, typer.Option(help="keep as many DPO pairs of each order as the rarer order has "
                                                      "(their chosen verdicts then split evenly between A and B)")] = False,
) -> None:
    """RISE-style synthesis: SFT judgments from swap-consistent pairs, DPO pairs of judgments from the rest."""
    from posttrain.judges.synthesis import SynthesisOptions, run_synthesis

    summary = run_synthesis(tool_options(context, SynthesisOptions))
    typer.echo(json.dumps({key: value for key, value in summary.items() if key != "judge_metrics"}, indent=2))


@judge_app.command("label")
def judge_label(
    context: typer.Context,
    judge: Annotated[str, typer.Option(help="judge model name or directory")],
    pairs: Annotated[str, typer.Option(help="preference file, or task:arithmetic (synthetic training pairs)")],
    out_dir: Annotated[Path, out_option("directory for pairs.jsonl, gold.jsonl and summary.json")] = Path("runs/judge-labels"),
    template: Annotated[str, typer.Option(help="pairwise template: rise, j1, grm, s2j, or a file")] = "rise",
    keep: Annotated[str, typer.Option(help="consistent: drop pairs judged differently in the two orders; "
                                           "first: the first order decides")] = "consistent",
    n: Annotated[int | None, typer.Option(help="number of pairs (default: all; 100 for the task)")] = None,
    max_new_tokens: int = 384,
    batch_size: int = 16,
    engine: Engine = "hf",
    seed: int = 0,
) -> None:
    """Relabel preference pairs with a judge (both orders) for downstream DPO; report agreement with gold."""
    from posttrain.judges.labeling import LabelOptions, run_labeling

    summary = run_labeling(tool_options(context, LabelOptions))
    typer.echo(json.dumps(summary, indent=2))


@judge_app.command("metarm-data")
def judge_metarm_data(
    context: typer.Context,
    judge: Annotated[str, typer.Option(help="the base generative judge (model name or directory)")],
    pairs: Annotated[str, typer.Option(help="preference file with critiques, or task:arithmetic")] = "task:arithmetic",
    k: Annotated[int, typer.Option(help="sampled judgments per pair and order")] = 4,
    out_dir: Annotated[Path, out_option("directory for metarm.jsonl and summary.json")] = Path("runs/metarm-data"),
    template: Annotated[str, typer.Option(help="GRM template: grm or s2j")] = "grm",
    backend: Annotated[str, typer.Option(help="critique similarity: numbers, lexical, embedding or llm")] = "lexical",
    threshold: Annotated[float | None, typer.Option(help="similarity threshold (default: the backend's)")] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    n: Annotated[int | None, typer.Option(help="number of pairs (default: all; 100 for the task)")] = None,
    seed: int = 0,
    batch_size: int = 16,
    engine: Engine = "hf",
) -> None:
    """MetaRM cold-start data: the judge's critiques of critique-bearing pairs, labelled with their rule reward."""
    from posttrain.judges.metarm_data import MetarmDataOptions, run_metarm_data

    summary = run_metarm_data(tool_options(context, MetarmDataOptions))
    typer.echo(json.dumps(summary, indent=2))


@rollout_app.command("serve")
def rollout_serve(
    model: Annotated[str, typer.Option(help="model name or directory (for vllm: a directory or hub id)")],
    engine: Annotated[str, typer.Option(help="hf (model.generate) or vllm")] = "hf",
    host: Annotated[str, typer.Option(help="address to listen on; the server has no authentication (anyone who "
                                            "reaches it can replace its weights): keep it on a trusted network")
                   ] = "127.0.0.1",
    port: int = 8765,
    dtype: Annotated[str, typer.Option(help="weights dtype: auto, float32, bfloat16, float16")] = "auto",
    batch_size: Annotated[int, typer.Option(help="hf: most sequences per generate call")] = 16,
    device: Annotated[str, typer.Option(help="hf: auto, cpu or cuda")] = "auto",
) -> None:
    """Host a rollout engine over HTTP; learners sample from it and push weights to it (RemoteEngine)."""
    from posttrain.errors import check_choice
    from posttrain.models import load_tokenizer
    from posttrain.rollout.server import serve

    check_choice(engine, ("hf", "vllm"), "rollout engine", where="--engine")
    tokenizer = load_tokenizer(model)
    if engine == "hf":
        from posttrain.models import load_model
        from posttrain.rollout import HFEngine

        rollout_engine = HFEngine(load_model(model, dtype=dtype, device=device), tokenizer, batch_size=batch_size)
    else:
        from posttrain.rollout.engines import choose_engine
        from posttrain.rollout.vllm import VLLMEngine

        weights = choose_engine("vllm", model, setting="--engine").weights
        rollout_engine = VLLMEngine(weights, tokenizer, dtype="float32" if dtype == "auto" else dtype)
    info = {"model": model, "engine": engine, "dtype": dtype}
    serve(rollout_engine, host, port, info,
          ready=lambda url: typer.echo(f"rollout server ({engine}, {model}) listening on {url}", err=True))


def _click_exceptions():
    """The module of the click exceptions typer raises: its vendored copy (``typer._click``) or click itself."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer releases that still depend on click
        from click import exceptions
    return exceptions


def _show_usage_error(error: Exception) -> None:
    """Print a click usage error as ``error: ...`` and a hint, like a :class:`PosttrainError` (no usage block)."""
    context = getattr(error, "ctx", None)
    command = context.command_path if context is not None else "posttrain"
    typer.echo(f"error: {error.format_message()}\nHow to fix: see `{command} --help`", err=True)


def main() -> None:
    """Run the ``posttrain`` command. A :class:`PosttrainError` or a usage mistake (unknown option or command,
    missing or malformed value) prints a short message without a traceback and exits with status 2; a command
    group called without a sub-command prints its help and exits with 2; ``--help`` exits with 0."""
    exceptions = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except PosttrainError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except getattr(exceptions, "NoArgsIsHelpError", ()) as error:
        error.show()
        sys.exit(2)
    except exceptions.ClickException as error:
        _show_usage_error(error)
        sys.exit(2)
    except typer.Abort:  # Ctrl-D at a prompt
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
