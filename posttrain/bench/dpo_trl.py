"""Benchmark worker: TRL's ``DPOTrainer`` on the benchmark settings (one JSON line out)."""

from __future__ import annotations

import json
import statistics
import sys

from posttrain.bench.harness import peak_rss_mb
from posttrain.bench.on_policy import trl_step_timer


def main(settings: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    pairs = [json.loads(line) for line in open(settings["data"], encoding="utf-8")]
    tokenizer = AutoTokenizer.from_pretrained(settings["model"])
    total_steps = settings["steps"] + settings["warmup_steps"]
    args = DPOConfig(
        output_dir=settings["workdir"] + "/trl", per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=1, max_steps=total_steps, learning_rate=settings["lr"],
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to=[], max_length=settings["max_length"], bf16=False, fp16=False, use_cpu=settings["device"] == "cpu",
        dataloader_num_workers=0, seed=0, beta=settings["beta"], loss_type=["sigmoid"],
        precompute_ref_log_probs=True, model_init_kwargs={"dtype": torch.float32}, disable_tqdm=True,
    )
    durations: list[float] = []
    losses: list[float] = []
    real_tokens: list[int] = []
    trainer = DPOTrainer(model=settings["model"], args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer, callbacks=[trl_step_timer(durations, losses)])
    # the constructor has computed the reference log-probs; the step timer starts with the first step
    collator = trainer.data_collator

    def counting_collator(features):
        batch = collator(features)
        real_tokens.append(int(batch["attention_mask"].sum()))  # chosen and rejected rows, no padding
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    timed = durations[settings["warmup_steps"]:]
    tokens = real_tokens[-total_steps:][settings["warmup_steps"]:]  # batches of the training steps
    return {"tokens_per_s": sum(tokens) / sum(timed), "seconds_per_step": statistics.mean(timed),
            "peak_rss_mb": peak_rss_mb(), "final_loss": losses[-1] if losses else None, "steps": len(durations)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
