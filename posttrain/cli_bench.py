"""``posttrain bench ...``: the same steps in posttrain and in a peer library (TRL), each side in its own process,
alternated over repeats; each command builds its benchmark's options object (:func:`~posttrain.cli_eval.tool_options`)
and prints the result as JSON (:mod:`posttrain.bench` holds the benchmarks)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from posttrain.cli_eval import AsJson, tool_options

bench_app = typer.Typer(no_args_is_help=True, help="Benchmark posttrain against peer libraries.")

# options several benchmarks share
PeerLibrary = Annotated[str, typer.Option(help="peer library")]
BenchDevice = Annotated[str, typer.Option(help="cpu (float32 on both sides) or cuda (float32 weights, bf16 autocast "
                                               "on both sides)")]
GradientCheckpointing = Annotated[bool | None, typer.Option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    help="set on both sides (default: each side's own default, posttrain off, TRL on)")]
TimedSteps = Annotated[int, typer.Option(help="timed steps")]
WarmupSteps = Annotated[int, typer.Option(help="steps run before the timed ones")]
TrlVllm = Annotated[bool, typer.Option(
    "--trl-vllm", help="TRL samples with its colocated vLLM engine (default: HF generate)")]
PosttrainSet = Annotated[list[str] | None, typer.Option(
    "--set", help="KEY=VALUE for posttrain's run config only (repeatable, validated), e.g. train.memory=lean")]


@bench_app.command("sft")
def bench_sft(
    context: typer.Context,
    vs: PeerLibrary = "trl",
    device: BenchDevice = "cpu",
    model: str = "smollm2-135m",
    steps: TimedSteps = 6,
    batch_size: int = 8,
    max_length: int = 256,
    repeats: int = 2,
    warmup_steps: WarmupSteps = 1,
    gradient_checkpointing: GradientCheckpointing = None,
    posttrain_set: PosttrainSet = None,
    as_json: AsJson = False,
) -> None:
    """Same SFT steps in posttrain and in the peer, each in its own process, alternated over repeats."""
    from posttrain.bench.sft import SftBenchOptions, run_sft_benchmark

    _print(run_sft_benchmark(tool_options(context, SftBenchOptions)), as_json)


@bench_app.command("dpo")
def bench_dpo(
    context: typer.Context,
    vs: PeerLibrary = "trl",
    device: BenchDevice = "cpu",
    model: str = "smollm2-135m",
    steps: TimedSteps = 4,
    batch_size: Annotated[int, typer.Option(help="pairs per step")] = 4,
    max_length: int = 256,
    repeats: int = 2,
    warmup_steps: WarmupSteps = 1,
    beta: Annotated[float, typer.Option(help="β of the sigmoid DPO loss")] = 0.1,
    lr: Annotated[float, typer.Option(help="constant learning rate")] = 1e-6,
    micro_batch_tokens: Annotated[int | None, typer.Option(
        help="posttrain's train.micro_batch_tokens (default: its own; 0 = one pass per step, as TRL)")] = None,
    posttrain_set: PosttrainSet = None,
    as_json: AsJson = False,
) -> None:
    """Same DPO steps (reference log-probs precomputed, not timed) in posttrain and in the peer, alternated."""
    from posttrain.bench.dpo import DpoBenchOptions, run_dpo_benchmark

    _print(run_dpo_benchmark(tool_options(context, DpoBenchOptions)), as_json)


@bench_app.command("distill")
def bench_distill(
    context: typer.Context,
    vs: PeerLibrary = "trl",
    device: BenchDevice = "cpu",
    model: str = "smollm2-135m",
    steps: TimedSteps = 4,
    warmup_steps: WarmupSteps = 1,
    prompts: Annotated[int, typer.Option(help="prompts per step, one completion each")] = 8,
    max_completion_length: int = 64,
    teacher_temperature: Annotated[float, typer.Option(help="T of the self-teacher")] = 2.0,
    repeats: int = 2,
    posttrain_set: PosttrainSet = None,
    trl_vllm: TrlVllm = False,
    as_json: AsJson = False,
) -> None:
    """TS-OPSD steps (live self-teacher) against TRL's DistillationTrainer with the model as its own teacher."""
    from posttrain.bench.distill import DistillBenchOptions, run_distill_benchmark

    _print(run_distill_benchmark(tool_options(context, DistillBenchOptions)), as_json)


@bench_app.command("grpo")
def bench_grpo(
    context: typer.Context,
    vs: PeerLibrary = "trl",
    device: BenchDevice = "cpu",
    model: str = "smollm2-135m",
    steps: TimedSteps = 4,
    warmup_steps: WarmupSteps = 1,
    prompts: Annotated[int, typer.Option(help="prompts per step")] = 1,
    num_generations: Annotated[int, typer.Option(help="completions per prompt, G")] = 8,
    max_completion_length: Annotated[int, typer.Option(help="most tokens generated per completion")] = 64,
    repeats: int = 2,
    gradient_checkpointing: GradientCheckpointing = None,
    posttrain_set: PosttrainSet = None,
    trl_vllm: TrlVllm = False,
    as_json: AsJson = False,
) -> None:
    """Same GRPO steps (prompts, G, sampling, reward, loss) in posttrain and in the peer, alternated over repeats."""
    from posttrain.bench.grpo import GrpoBenchOptions, run_grpo_benchmark

    _print(run_grpo_benchmark(tool_options(context, GrpoBenchOptions)), as_json)


def _print(result: dict, as_json: bool) -> None:
    """A benchmark's result: one line of JSON with ``--json``, indented otherwise."""
    typer.echo(json.dumps(result, indent=None if as_json else 2))
