"""What the two precision opt-ins buy on this machine: bf16 rollouts (``rollout.dtype``) and AdamW with bf16
moments (``optim.state_dtype``). posttrain alone, no peer.

    python benchmarks/bench_precision.py --threads 2 --out docs/results/bench_precision_cpu.json

Measures, with the embedded model in fp32:
* one product with the output projection ([8, hidden] × [hidden, vocab]) in fp32 and in bf16;
* ``HFEngine.generate`` of 8 samples × 64 new tokens of one arithmetic prompt, with the weights as they are and
  cast to bf16 for the call (the same seed; tokens generated are reported, as the samples differ);
* one AdamW step over all parameters (random gradients) with ``torch.optim.AdamW`` and with
  :class:`~posttrain.trainers.optimizer.AdamWBF16State`, and the bytes of optimizer state each holds.
Times are the best of ``--repeats`` after one untimed call. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from posttrain.data import encode_prompt, make_task
from posttrain.models import load_model, load_tokenizer
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.trainers.optimizer import AdamWBF16State


def best_seconds(action, repeats: int) -> float:
    action()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def projection_times(model, repeats: int) -> dict:
    weight = model.get_output_embeddings().weight.detach()
    rows = torch.randn(8, weight.shape[1])
    figures = {}
    for dtype in (torch.float32, torch.bfloat16):
        cast_weight, cast_rows = weight.to(dtype), rows.to(dtype)
        seconds = best_seconds(lambda w=cast_weight, x=cast_rows: torch.nn.functional.linear(x, w), 10 * repeats)
        figures[str(dtype).removeprefix("torch.")] = {"ms": 1000 * seconds}
    return figures


def generation_times(model, tokenizer, repeats: int) -> dict:
    prompt = encode_prompt(make_task("arithmetic", 1, 0, levels=[1])[0], tokenizer)
    params = SamplingParams(temperature=1.0, max_new_tokens=64, n=8, seed=1)
    figures = {}
    for dtype in (None, torch.bfloat16):
        engine = HFEngine(model, tokenizer, batch_size=8, dtype=dtype)
        tokens = sum(len(g) for g in engine.generate([prompt], params))
        seconds = best_seconds(lambda e=engine: e.generate([prompt], params), repeats)
        figures["float32" if dtype is None else "bfloat16"] = {"seconds": seconds, "tokens": tokens}
    return figures


def optimizer_times(model, repeats: int) -> dict:
    parameters = list(model.parameters())
    generator = torch.Generator().manual_seed(0)
    for parameter in parameters:
        parameter.grad = 1e-3 * torch.randn(parameter.shape, generator=generator)
    figures = {}
    for name, optimizer in (("torch_adamw", torch.optim.AdamW(parameters, lr=1e-8)),
                            ("adamw_bf16_state", AdamWBF16State(parameters, lr=1e-8))):
        seconds = best_seconds(optimizer.step, repeats)
        state_bytes = sum(value.numel() * value.element_size() for state in optimizer.state.values()
                          for value in state.values() if torch.is_tensor(value))
        figures[name] = {"seconds": seconds, "state_mb": state_bytes / 2**20}
        optimizer.state.clear()
    for parameter in parameters:
        parameter.grad = None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype="float32", device="cpu").eval()
    tokenizer = load_tokenizer(args.model)
    with torch.no_grad():
        result = {"threads": args.threads, "projection": projection_times(model, args.repeats),
                  "generation": generation_times(model, tokenizer, args.repeats)}
    result["optimizer_step"] = optimizer_times(model, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
