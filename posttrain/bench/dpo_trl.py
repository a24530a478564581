"""Benchmark worker: TRL 1.16's ``DPOTrainer`` on the benchmark settings (one JSON line out).

* Pairs and order: the dataset is handed over in posttrain's
  :class:`~posttrain.trainers.sampler.EpochSampler` order with ``train_sampling_strategy="sequential"``
  (no shuffle), so step ``k`` trains on the pairs posttrain's step ``k`` does.
* Reference: ``precompute_ref_log_probs=True`` makes the constructor run the reference pass over the whole
  dataset (with no reference copy of the model kept); the step timer and the token counter are attached
  to the trainer after it, so neither sees the precompute.
* Tokens: each training batch's ``attention_mask`` sum — the real tokens of its chosen and rejected rows
  (``DataCollatorForPreference`` stacks both, right-padded).
* Step duration: ``on_step_begin`` to ``on_step_end`` (forward, loss, backward, clipping, optimizer).
"""

from __future__ import annotations

import json
import sys

from posttrain.bench.harness import peak_memory
from posttrain.bench.steps import token_figures, trl_step_timer
from posttrain.trainers.sampler import EpochSampler


def dpo_config(settings: dict):
    """TRL's ``DPOConfig`` for the benchmark: the same batch, steps, lr, clipping, β, loss, precision."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=settings["workdir"] + "/trl", per_device_train_batch_size=settings["batch_size"],
        gradient_accumulation_steps=1, max_steps=settings["steps"] + settings["warmup_steps"],
        learning_rate=settings["lr"], lr_scheduler_type=settings["schedule"], warmup_steps=0, max_grad_norm=1.0,
        train_sampling_strategy="sequential", logging_steps=1, save_strategy="no", report_to=[],
        max_length=settings["max_length"], bf16=settings["device"] == "cuda", fp16=False, use_cpu=settings["device"] == "cpu",
        dataloader_num_workers=0, seed=settings["seed"], beta=settings["beta"], loss_type=[settings["loss"]],
        precompute_ref_log_probs=True, model_init_kwargs={"dtype": settings["dtype"]}, disable_tqdm=True,
    )


def main(settings: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    torch.manual_seed(settings["seed"])
    pairs = [json.loads(line) for line in open(settings["data"], encoding="utf-8")]
    order = EpochSampler(len(pairs), settings["seed"]).next_batch(len(pairs))
    trainer = DPOTrainer(model=settings["model"], args=dpo_config(settings),
                         train_dataset=Dataset.from_list([pairs[i] for i in order]),
                         processing_class=AutoTokenizer.from_pretrained(settings["model"]))
    # the constructor has run the reference pass; count and time only what the training steps do from here on
    durations: list[float] = []
    losses: list[float] = []
    tokens: list[int] = []
    trainer.add_callback(trl_step_timer(durations, losses))
    collator = trainer.data_collator

    def counting_collator(features):
        batch = collator(features)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    trainer.train()
    figures = token_figures(durations, tokens, losses, settings["warmup_steps"])
    return {**figures, **peak_memory()}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
