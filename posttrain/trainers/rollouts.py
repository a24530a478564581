"""What the on-policy trainers (RL and distillation) share: seeded sampling, rows of rollouts as tensors and the
``samples.jsonl`` log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.config import RunConfig
from posttrain.data import pad_sequences
from posttrain.errors import ConfigError
from posttrain.rollout import Generation, RolloutEngine
from posttrain.rollout.engines import EngineWeights, build_engine, started_engine
from posttrain.trainers.distributed import Processes


def prompts_per_process(prompts_per_step: int, processes: Processes) -> int:
    """Each process samples an equal share of a step's prompts; a :class:`ConfigError` when they do not divide."""
    if prompts_per_step % processes.world_size:
        raise ConfigError(f"rollout.prompts_per_step = {prompts_per_step} is not divisible by the "
                          f"{processes.world_size} processes", where="rollout.prompts_per_step",
                          fix="use a multiple of the number of processes")
    return prompts_per_step // processes.world_size


def rollout_engine(config: RunConfig, model, tokenizer, processes: Processes) -> tuple[RolloutEngine, EngineWeights]:
    """The engine ``rollout.engine`` asks for (``auto`` resolved; the choice is printed with its reason) and the
    :class:`EngineWeights` that keeps it in step with ``model`` (a server shared by the processes gets the weights
    from the first process)."""
    ro = config.rollout
    kind = ro.engine
    if processes.lockstep:  # FSDP: the full weights exist on no process; the shards generate together
        if kind in ("vllm", "server"):
            raise ConfigError(f"rollout.engine={kind} needs the full weights on the process that syncs them, and "
                              "under dist.strategy=fsdp no process holds them", where="rollout.engine",
                              fix="use rollout.engine=hf with fsdp, or dist.strategy=ddp with vLLM")
        kind = "hf"
    settings = dict(batch_size=ro.batch_size, dtype=ro.dtype, seed=config.seed,
                    sequences=ro.prompts_per_step * ro.samples_per_prompt,
                    max_model_len=config.data.max_length + ro.max_new_tokens, kv_cache_gib=ro.kv_cache_gib,
                    gpu_memory_utilization=ro.gpu_memory_utilization, server_url=ro.server_url,
                    synced=processes.lockstep)
    engine, choice = started_engine(kind, config.model.name,
                                    lambda choice: build_engine(choice, model, tokenizer, **settings))
    if processes.is_main:
        print(f"rollout engine: {choice.kind} ({choice.reason})", flush=True)
    shared = choice.kind == "server"
    return engine, EngineWeights(engine, sleep=ro.sleep, pushes=processes.is_main or not shared,
                                 barrier=processes.barrier if shared else lambda: None)


def rollout_seed(seed: int, step: int, processes: Processes) -> int:
    """The sampling seed of one step on one process: distinct per (run seed, step, rank), the same on resume."""
    return (seed * 1_000_003 + step) * processes.world_size + processes.rank


@dataclass
class RolloutRows:
    """Right-padded rows ``prompt, completion[, tail]``; per-token tensors are ``[B, T-1]``, aligned with the
    targets ``input_ids[:, 1:]``."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    target_mask: torch.Tensor  # completion tokens + tail: the positions the output layer projects
    completion_mask: torch.Tensor  # completion tokens that are trained on
    sampled_logprobs: torch.Tensor  # the engine's log-prob of each completion token
    tail_index: torch.Tensor  # [B] target index of the first tail token (= end of the completion)
    sequence_tokens: float  # prompt + completion + tail tokens of all rows


def rollout_rows(generations: Sequence[Generation], pad_id: int, tail: Sequence[int] = (),
                 trained: Sequence[bool] | None = None,
                 prompt_ids: Sequence[list[int]] | None = None) -> RolloutRows:
    """Rows of ``prompt_ids[i]`` (default: each generation's own prompt), its completion and ``tail``.

    ``trained[i] = False`` keeps row ``i``'s completion out of ``completion_mask`` (but not of ``target_mask``).
    With other ``prompt_ids`` (a teacher that sees privileged context) the completion tokens keep their order,
    so ``hidden[:, :-1][target_mask]`` lines up token for token with the student's rows.
    """
    prompts = [g.prompt_ids for g in generations] if prompt_ids is None else prompt_ids
    keep = [True] * len(generations) if trained is None else trained
    sequences = [[*p, *g.token_ids, *tail] for p, g in zip(prompts, generations, strict=True)]
    input_ids = pad_sequences(sequences, pad_id)
    rows, width = input_ids.shape
    target_mask = torch.zeros((rows, width - 1))
    completion_mask = torch.zeros((rows, width - 1))
    sampled = torch.zeros((rows, width - 1))
    tail_index = torch.zeros(rows, dtype=torch.long)
    for row, (prompt, g, train) in enumerate(zip(prompts, generations, keep, strict=True)):
        first, end = len(prompt) - 1, len(prompt) - 1 + len(g)  # target indices of the completion
        target_mask[row, first : end + len(tail)] = 1
        completion_mask[row, first:end] = float(train)
        sampled[row, first:end] = torch.tensor(g.logprobs)
        tail_index[row] = end
    position_ids = torch.arange(width).expand(rows, width)
    return RolloutRows(input_ids, position_ids, target_mask, completion_mask, sampled, tail_index,
                       float(sum(len(s) for s in sequences)))


def samples_path(run_dir: Path, processes: Processes) -> Path:
    return run_dir / ("samples.jsonl" if processes.is_main else f"samples-rank{processes.rank}.jsonl")


def append_samples(path: Path, step: int, share: Sequence[int], generations: Sequence[Generation],
                   columns: Sequence[dict]) -> None:
    """One line per generation: 1-based ``step``, the training ``record`` index, the completion and ``columns[i]``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        for g, extra in zip(generations, columns, strict=True):
            row = {"step": step + 1, "record": share[g.prompt_index], "sample": g.sample_index,
                   "completion": g.text, "finish_reason": g.finish_reason, "tokens": len(g), **extra}
            out.write(json.dumps(row) + "\n")
