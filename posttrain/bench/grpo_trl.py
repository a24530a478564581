"""Benchmark worker: TRL 1.16's ``GRPOTrainer`` on the benchmark settings (one JSON line out).

One step is one generation batch: ``per_device_train_batch_size = prompts × G``, ``steps_per_generation = 1``,
``gradient_accumulation_steps = 1`` and ``num_iterations = 1``, so every step samples, scores and takes
one optimizer update, as posttrain does.

Sampling is TRL's HF ``generate`` by default; ``settings["trl_vllm"]`` makes it TRL's colocated vLLM engine
(:func:`~posttrain.bench.steps.trl_vllm_args`, weights pushed by :func:`~posttrain.bench.steps.sync_by_reload`
on the CPU).

* Prompts: posttrain's trainer visits the data in the order of
  :class:`~posttrain.trainers.sampler.EpochSampler` with the run's seed; the dataset is handed to TRL in
  that order with ``shuffle_dataset=False``, so step ``k`` of both sides samples the same prompts.
* Reward: TRL calls the reward function once per generation batch with every completion; the function
  scores each with posttrain's :func:`~posttrain.rewards.builtin.math_reward`.
* Generated tokens: the same call receives ``completion_ids``, the token ids TRL kept for each completion
  (through the first end-of-sequence token; ``GRPOTrainer._generate_single_turn`` masks what follows).
  Their lengths are the ones TRL averages into its logged ``completions/mean_length``; summing them
  counts exactly, without going through a logged mean.
* Step duration: from ``on_step_begin`` to ``on_step_end`` of the trainer callbacks, which spans
  generation, rewards, loss, backward and the optimizer step (logging runs after ``on_step_end``).
"""

from __future__ import annotations

import json
import sys

from posttrain.bench.harness import peak_memory
from posttrain.bench.steps import (
    generation_figures,
    sync_by_reload,
    trl_step_timer,
    trl_training_args,
    trl_vllm_args,
)
from posttrain.rewards.builtin import math_reward
from posttrain.trainers.sampler import EpochSampler


def main(settings: dict) -> dict:
    vllm_args = trl_vllm_args(settings)  # first: it sets vLLM's environment, which TRL's import may read
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(settings["seed"])
    records = [json.loads(line) for line in open(settings["data"], encoding="utf-8")]
    order = EpochSampler(len(records), settings["seed"]).next_batch(len(records))
    group = settings["num_generations"]
    gradient_checkpointing = settings["gradient_checkpointing"]
    args = GRPOConfig(
        **trl_training_args(settings),
        per_device_train_batch_size=settings["prompts"] * group,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=group,
        max_completion_length=settings["max_completion_length"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
        top_k=0,
        loss_type=settings["loss"],
        beta=settings["beta"],
        **({} if gradient_checkpointing is None else {"gradient_checkpointing": gradient_checkpointing}),
        **vllm_args,
    )
    completion_lengths: list[list[int]] = []  # per generation batch, the token count of each completion
    questions: list[list[str]] = []  # per generation batch, the prompts it sampled (one per group)
    durations: list[float] = []
    losses: list[float] = []

    def math(prompts, completions, completion_ids, reference, **_) -> list[float]:
        completion_lengths.append([len(ids) for ids in completion_ids])
        questions.append([prompt[-1]["content"] for prompt in prompts[::group]])
        return [
            math_reward(prompt[-1]["content"], completion[-1]["content"], {"reference": answer})
            for prompt, completion, answer in zip(prompts, completions, reference, strict=True)
        ]

    trainer = GRPOTrainer(
        model=settings["model"],
        reward_funcs=[math],
        args=args,
        train_dataset=Dataset.from_list([records[i] for i in order]),
        processing_class=AutoTokenizer.from_pretrained(settings["model"]),
        callbacks=[trl_step_timer(durations, losses)],
    )
    sync_by_reload(trainer, settings)
    trainer.train()
    figures = generation_figures(durations, completion_lengths, settings["warmup_steps"])
    return {
        **figures,
        **peak_memory(),
        "final_loss": losses[-1] if losses else None,
        "prompts_per_step": questions,
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
