"""Benchmark posttrain's TS-OPSD (live self-teacher) against TRL's DistillationTrainer with the same model as its
own teacher (same as `posttrain bench distill --vs trl`).

    python benchmarks/bench_distill.py --steps 4 --prompts 8 --max-completion-length 64 --repeats 2 --out distill.json

Run it on a quiet machine: on 2 CPU cores a second busy process distorts both sides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.bench.distill import DistillBenchOptions, run_distill_benchmark
from posttrain.bench.harness import print_and_save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step, one completion each")
    parser.add_argument("--max-completion-length", type=int, default=64)
    parser.add_argument("--teacher-temperature", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="posttrain_set", action="append", default=[], metavar="KEY=VALUE",
                        help="posttrain's run config only (repeatable), e.g. rollout.dtype=bfloat16")
    parser.add_argument("--trl-vllm", action="store_true",
                        help="TRL samples with its colocated vLLM engine (default: HF generate)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run_distill_benchmark(DistillBenchOptions(
        model=args.model, steps=args.steps, prompts=args.prompts, max_completion_length=args.max_completion_length,
        teacher_temperature=args.teacher_temperature, repeats=args.repeats, warmup_steps=args.warmup_steps,
        posttrain_set=args.posttrain_set, trl_vllm=args.trl_vllm))
    print_and_save(result, args.out)


if __name__ == "__main__":
    main()
