"""Benchmark posttrain's DPO against TRL's DPOTrainer (same as `posttrain bench dpo --vs trl`).

    python benchmarks/bench_dpo.py --steps 4 --batch-size 4 --max-length 256 --repeats 2 --out dpo.json

Reference log-probs are precomputed on both sides before training and are not timed; see
posttrain/bench/dpo.py for what each figure counts.

Run it on a quiet machine: on 2 CPU cores a second busy process distorts both sides.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from posttrain.bench.dpo import DpoBenchOptions, run_dpo_benchmark
from posttrain.bench.harness import print_and_save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--micro-batch-tokens", type=int, default=None,
                        help="posttrain's train.micro_batch_tokens (default: its own; 0 = one pass per step, as TRL)")
    parser.add_argument("--set", dest="posttrain_set", action="append", default=[], metavar="KEY=VALUE",
                        help="posttrain's run config only (repeatable), e.g. train.memory=lean")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run_dpo_benchmark(DpoBenchOptions(
        model=args.model, steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
        repeats=args.repeats, warmup_steps=args.warmup_steps, beta=args.beta, lr=args.lr,
        micro_batch_tokens=args.micro_batch_tokens, posttrain_set=args.posttrain_set))
    print_and_save(result, args.out)


if __name__ == "__main__":
    main()
