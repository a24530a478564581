"""Benchmark posttrain's SFT against TRL's SFTTrainer (same as `posttrain bench sft --vs trl`).

    python benchmarks/bench_sft.py --steps 6 --batch-size 8 --max-length 256 --repeats 2 --out sft.json

Run it on a quiet machine: on 2 CPU cores a second busy process distorts both sides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.bench.harness import print_and_save
from posttrain.bench.sft import SftBenchOptions, run_sft_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", choices=["default", "on", "off"], default="default",
                        help="default: each side's own default (posttrain off, TRL on)")
    parser.add_argument("--set", dest="posttrain_set", action="append", default=[], metavar="KEY=VALUE",
                        help="posttrain's run config only (repeatable), e.g. train.memory=lean")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run_sft_benchmark(SftBenchOptions(
        model=args.model, steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
        repeats=args.repeats, warmup_steps=args.warmup_steps,
        gradient_checkpointing={"default": None, "on": True, "off": False}[args.gradient_checkpointing],
        posttrain_set=args.posttrain_set))
    print_and_save(result, args.out)


if __name__ == "__main__":
    main()
