"""HFEngine against VLLMEngine on the embedded model (SmolLM2-135M-Instruct): warm generation time and tokens/s,
vLLM start-up and weight-sync time.

    python benchmarks/bench_engines.py                  # every engine x dtype, each in its own process
    python benchmarks/bench_engines.py --engine vllm --dtype bfloat16 --threads 1

Workloads (temperature 1, seed 0): 1 prompt x 8 samples x 64 new tokens and 4 prompts x 8 x 128. Each is run
once untimed (warm-up), then ``--repeats`` times; the best time is reported with the tokens generated (a sample
may stop early at its end token). For vLLM also: ``import vllm``, engine start-up and ``sync_from`` of the fp32
learner (every weight). The machine's CPU flags that matter for bf16 (avx512_bf16, amx) and its load average
are printed first: run it when the machine is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKLOADS = ((1, 8, 64), (4, 8, 128))
PROMPTS = (
    "Write a short story about a cat who learns to fly.",
    "Explain why the sky is blue.",
    "What is 17 times 23? Show your steps.",
    "Give three tips for learning a new language.",
)


def cpu_flags() -> dict:
    flags, model = set(), ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "amx_tile": "amx_tile" in flags, "load_average": os.getloadavg()}


def run_one(engine_name: str, dtype: str, repeats: int, threads: int | None) -> dict:
    import torch

    from posttrain.data import encode_prompt  # noqa: F401  (posttrain import cost outside the timings)
    from posttrain.models import embedded_model_dir, load_model, load_tokenizer
    from posttrain.rollout import HFEngine, SamplingParams

    if threads:
        torch.set_num_threads(threads)
    model_dir = embedded_model_dir()
    tokenizer = load_tokenizer(str(model_dir))
    learner = load_model(str(model_dir), dtype="float32")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=True) for text in PROMPTS]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    result: dict = {"engine": engine_name, "dtype": dtype, "threads": torch.get_num_threads()}
    if engine_name == "hf":
        engine = HFEngine(learner, tokenizer, batch_size=32, dtype=None if dtype == "float32" else dtype)
    else:
        started = time.perf_counter()
        import vllm  # noqa: F401

        result["import_s"] = round(time.perf_counter() - started, 2)
        from posttrain.rollout.vllm import VLLMEngine

        started = time.perf_counter()
        engine = VLLMEngine(model_dir, tokenizer, dtype=dtype, max_model_len=1024, kv_cache_gib=2,
                            num_threads=threads)
        result["start_s"] = round(time.perf_counter() - started, 2)
        engine.sync_from(learner)
        started = time.perf_counter()
        engine.sync_from(learner)
        result["sync_s"] = round(time.perf_counter() - started, 2)
    for prompt_count, samples, new_tokens in WORKLOADS:
        params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, n=samples, seed=0)
        batch = prompts[:prompt_count]
        engine.generate(batch, params)
        best, tokens = float("inf"), 0
        for _ in range(repeats):
            started = time.perf_counter()
            generations = engine.generate(batch, params)
            elapsed = time.perf_counter() - started
            if elapsed < best:
                best, tokens = elapsed, sum(len(g.token_ids) for g in generations)
        result[f"{prompt_count}x{samples}x{new_tokens}"] = {"seconds": round(best, 2), "tokens": tokens,
                                                           "tokens_per_s": round(tokens / best, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("hf", "vllm"))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.engine and args.dtype:
        print(json.dumps(run_one(args.engine, args.dtype, args.repeats, args.threads)), flush=True)
        return
    print(json.dumps({"host": cpu_flags()}), flush=True)
    environment = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    for engine in ("hf", "vllm"):
        for dtype in ("float32", "bfloat16"):
            command = [sys.executable, __file__, "--engine", engine, "--dtype", dtype, "--repeats", str(args.repeats)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            finished = subprocess.run(command, env=environment, capture_output=True, text=True)
            lines = [line for line in finished.stdout.splitlines() if line.startswith("{")]
            print(lines[-1] if lines else json.dumps({"engine": engine, "dtype": dtype, "error":
                                                      finished.stderr.strip().splitlines()[-3:]}), flush=True)
    print(json.dumps({"load_average_after": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
