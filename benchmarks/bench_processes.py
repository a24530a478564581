"""Peak memory and speed of SFT on one process, on two DDP replicas and on two FSDP2 shards (same global batch).

    python benchmarks/bench_processes.py --steps 4 --batch-size 8 --max-length 256 --out processes.json

Each setting is launched with ``accelerate launch`` (one process: plain ``python``); every process reports its
peak RSS and the run's tokens/s. FSDP keeps 1/N of every parameter, gradient and AdamW moment per process, so
its peak should sit below one process's by at least (1 − 1/N) × (parameters + gradients + moments); DDP holds a
full replica and shows what the smaller per-process batch alone saves. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from posttrain.bench.harness import host_info, peak_rss_mb


def worker(settings: dict) -> None:
    import torch.distributed as dist

    from posttrain.config import load_config
    from posttrain.trainers.run import train
    from posttrain.trainers.run_log import read_metrics

    config = load_config(None, settings["overrides"])
    train(config)
    rank = dist.get_rank() if dist.is_initialized() else 0
    steps = [m for m in read_metrics(config.run_dir / "metrics.jsonl") if "loss" in m][1:]  # step 1 warms up
    seconds = sum(m["seconds_per_step"] for m in steps)
    print(json.dumps({"rank": rank, "peak_rss_mb": peak_rss_mb(),
                      "tokens_per_s": sum(m["tokens"] for m in steps) / seconds,
                      "final_loss": steps[-1]["loss"]}), flush=True)


def launch(processes: int, strategy: str, overrides: list[str]) -> list[dict]:
    settings = json.dumps({"overrides": [*overrides, f"dist.strategy={strategy}"]})
    command = [sys.executable, __file__, "--worker", settings]
    if processes > 1:
        command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(29700 + os.getpid() % 200), __file__, "--worker", settings]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                          env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if done.returncode != 0:
        raise SystemExit(f"{strategy} x{processes} failed:\n{done.stderr[-3000:]}")
    return sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rank"')),
                  key=lambda r: r["rank"])


def state_mb(model: str) -> float:
    """Parameters + gradients + two fp32 AdamW moments of ``model``, in MiB (4 bytes each, 4 copies)."""
    from posttrain.models import load_model

    return sum(p.numel() for p in load_model(model).parameters()) * 16 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (one more warms up)")
    parser.add_argument("--batch-size", type=int, default=8, help="global examples a step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    root = tempfile.mkdtemp(prefix="bench-processes-")
    result = {"host": host_info(), "model": args.model, "global_batch": args.batch_size,
              "max_length": args.max_length, "steps": args.steps, "state_mb": state_mb(args.model), "runs": {}}
    for name, processes, strategy in (("one", 1, "auto"), ("ddp", 2, "ddp"), ("fsdp", 2, "fsdp")):
        overrides = [f"name={name}", f"output_dir={root}", f"model.name={args.model}",
                     "data.train={task: arithmetic, n: 256, seed: 0, levels: [3]}", f"data.max_length={args.max_length}",
                     f"train.batch_size={args.batch_size // processes}", f"train.max_steps={args.steps + 1}",
                     "train.save_final=false", "train.eval_at_start=false", "eval.kind=none",
                     "optim.lr=1e-5", "optim.schedule=constant", "optim.warmup_ratio=0"]
        ranks = launch(processes, strategy, overrides)
        result["runs"][name] = {"processes": processes, "peak_rss_mb": [r["peak_rss_mb"] for r in ranks],
                                "tokens_per_s": ranks[0]["tokens_per_s"], "final_loss": ranks[0]["final_loss"]}
        print(f"{name:>4} x{processes}: peak RSS per process {[round(r['peak_rss_mb']) for r in ranks]} MiB, "
              f"{ranks[0]['tokens_per_s']:.0f} tokens/s", flush=True)
    one = result["runs"]["one"]["peak_rss_mb"][0]
    fsdp = max(result["runs"]["fsdp"]["peak_rss_mb"])
    result["fsdp_saving_mb"] = one - fsdp
    result["sharded_share_mb"] = result["state_mb"] / 2
    print(f"FSDP saves {one - fsdp:.0f} MiB per process; the sharded share of parameters + gradients + moments is "
          f"{result['sharded_share_mb']:.0f} MiB", flush=True)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
