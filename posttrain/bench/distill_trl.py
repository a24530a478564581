"""Benchmark worker: TRL 1.16's ``DistillationTrainer`` on the benchmark settings (one JSON line out).

One step is one generation batch: ``per_device_train_batch_size = prompts``, ``gradient_accumulation_steps = 1``;
each step samples one completion per prompt from the student, runs the student and the teacher forward and
takes one optimizer update. The dataset is handed over in posttrain's
:class:`~posttrain.trainers.sampler.EpochSampler` order with ``shuffle_dataset=False``, so step ``k`` of both
sides sees the same prompts. Completion lengths are the row sums of the ``completion_mask`` that TRL's
``_generate_and_score_completions`` returns (tokens through the first end-of-sequence token); step durations
run from ``on_step_begin`` to ``on_step_end``. Sampling is TRL's HF ``generate`` by default, its colocated vLLM
engine with ``settings["trl_vllm"]`` (as in :mod:`posttrain.bench.grpo_trl`).
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
from posttrain.trainers.sampler import EpochSampler


def main(settings: dict) -> dict:
    vllm_args = trl_vllm_args(settings)  # first: it sets vLLM's environment, which TRL's import may read
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DistillationConfig, DistillationTrainer

    torch.manual_seed(settings["seed"])
    records = [json.loads(line) for line in open(settings["data"], encoding="utf-8")]
    order = EpochSampler(len(records), settings["seed"]).next_batch(len(records))
    args = DistillationConfig(
        **trl_training_args(settings),
        per_device_train_batch_size=settings["prompts"],
        max_completion_length=settings["max_completion_length"],
        temperature=settings["teacher_temperature"],
        generation_kwargs={"temperature": settings["temperature"]},
        top_p=1.0,
        top_k=0,
        beta=0.0,
        teacher_model_init_kwargs={"dtype": "float32"},
        **vllm_args,
    )
    completion_lengths: list[list[int]] = []
    durations: list[float] = []
    losses: list[float] = []

    class CountingTrainer(DistillationTrainer):
        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            completion_lengths.append([int(n) for n in output["completion_mask"].sum(1).tolist()])
            return output

    trainer = CountingTrainer(
        model=settings["model"],
        teacher_model=settings["model"],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": records[i]["prompt"]} for i in order]),
        processing_class=AutoTokenizer.from_pretrained(settings["model"]),
        callbacks=[trl_step_timer(durations, losses)],
    )
    sync_by_reload(trainer, settings)
    trainer.train()
    figures = generation_figures(durations, completion_lengths, settings["warmup_steps"])
    return {**figures, **peak_memory(), "final_loss": losses[-1] if losses else None}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
