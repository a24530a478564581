"""Benchmark posttrain's GRPO against TRL's GRPOTrainer (same as `posttrain bench grpo --vs trl`).

    python benchmarks/bench_grpo.py --steps 4 --prompts 1 --num-generations 8 --max-completion-length 64 \
        --repeats 2 --out grpo.json

Run it on a quiet machine: on 2 CPU cores a second busy process distorts both sides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.bench.grpo import GrpoBenchOptions, run_grpo_benchmark
from posttrain.bench.harness import print_and_save


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=1, help="prompts per step")
    parser.add_argument("--num-generations", type=int, default=8, help="completions per prompt, G")
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument(
        "--gradient-checkpointing",
        choices=["default", "on", "off"],
        default="default",
        help="default: each side's own default (posttrain off, TRL on)",
    )
    parser.add_argument("--set", dest="posttrain_set", action="append", default=[], metavar="KEY=VALUE",
                        help="posttrain's run config only (repeatable), e.g. rollout.dtype=bfloat16")
    parser.add_argument("--trl-vllm", action="store_true",
                        help="TRL samples with its colocated vLLM engine (default: HF generate)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run_grpo_benchmark(GrpoBenchOptions(
        model=args.model,
        steps=args.steps,
        prompts=args.prompts,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        repeats=args.repeats,
        warmup_steps=args.warmup_steps,
        lr=args.lr,
        posttrain_set=args.posttrain_set,
        trl_vllm=args.trl_vllm,
        gradient_checkpointing={"default": None, "on": True, "off": False}[args.gradient_checkpointing],
    ))
    print_and_save(result, args.out)


if __name__ == "__main__":
    main()
