"""Which target tokens does ProFit mask (p <= tau) on the arithmetic task? Used in docs/reproductions.md.

    .venv/bin/python docs/scripts/profit_masked_tokens.py --model smollm2-135m --n 200 --tau 0.1
    .venv/bin/python docs/scripts/profit_masked_tokens.py --model runs/profit-in-style/sft/checkpoints/step-24/model \
        --data runs/profit-in-style/sample/sft.jsonl

Prints the fraction of completion tokens with p <= tau, and how many of those are digits; --data reads SFT records
from a file (default: the task's reference solutions).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from posttrain.data import collate, make_task, read_records, tokenize_sft, validate_records
from posttrain.models import load_model, load_tokenizer
from posttrain.ops import completion_logprobs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--data", default=None, help="an SFT file (default: the arithmetic task's solutions)")
    args = parser.parse_args()
    tokenizer, model = load_tokenizer(args.model), load_model(args.model, dtype="float32", device="cpu")
    if args.data:
        records = read_records(args.data, kind="sft").records[: args.n]
    else:
        records = validate_records(make_task("arithmetic", args.n, 0), kind="sft").records
    examples = tokenize_sft(records, tokenizer, 256).examples
    masked, total, digit_masked, digit_total = Counter(), 0, 0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            batch = collate(examples[start : start + 8], tokenizer.pad_token_id)
            out = completion_logprobs(model, batch["input_ids"], batch["loss_mask"], position_ids=batch["position_ids"])
            targets = batch["input_ids"][:, 1:]
            for row, col in out.mask.nonzero().tolist():
                text = tokenizer.decode([targets[row, col]])
                is_digit = text.strip().isdigit()
                low = out.logprobs[row, col].exp().item() <= args.tau
                total += 1
                digit_total += is_digit
                if low:
                    masked[text] += 1
                    digit_masked += is_digit
    n_masked = sum(masked.values())
    print(json.dumps({
        "completion_tokens": total, "masked": n_masked, "masked_fraction": n_masked / total,
        "digit_share_of_completion": digit_total / total, "digit_share_of_masked": digit_masked / max(n_masked, 1),
        "most_masked": masked.most_common(15),
    }, indent=1))


if __name__ == "__main__":
    main()
