"""Benchmark worker: TRL's ``SFTTrainer`` on the benchmark settings (one JSON line out)."""

from __future__ import annotations

import json
import statistics
import sys
import time

from posttrain.bench.harness import peak_memory


def main(settings: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    records = [json.loads(line) for line in open(settings["data"], encoding="utf-8")]
    tokenizer = AutoTokenizer.from_pretrained(settings["model"])
    total_steps = settings["steps"] + settings["warmup_steps"]
    args = SFTConfig(
        output_dir=settings["workdir"] + "/trl", per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=1, max_steps=total_steps, learning_rate=settings["lr"],
        lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to=[], max_length=settings["max_length"], bf16=settings["device"] == "cuda", fp16=False, use_cpu=settings["device"] == "cpu",
        dataloader_num_workers=0, seed=0,
        **({} if settings["gradient_checkpointing"] is None else {"gradient_checkpointing": settings["gradient_checkpointing"]}), model_init_kwargs={"dtype": torch.float32}, disable_tqdm=True,
    )
    step_ends: list[float] = []
    real_tokens: list[int] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if not step_ends:
                step_ends.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            step_ends.append(time.perf_counter())

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    trainer = SFTTrainer(model=settings["model"], args=args, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, callbacks=[Timer()])
    collator = trainer.data_collator

    def counting_collator(features):
        batch = collator(features)
        mask = batch.get("attention_mask")
        real_tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    durations = [b - a for a, b in zip(step_ends, step_ends[1:], strict=False)]
    timed = durations[settings["warmup_steps"]:]
    tokens = real_tokens[settings["warmup_steps"]:total_steps]
    return {"tokens_per_s": sum(tokens) / sum(timed), "seconds_per_step": statistics.mean(timed),
            **peak_memory(), "final_loss": losses[-1] if losses else None, "steps": len(durations)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
