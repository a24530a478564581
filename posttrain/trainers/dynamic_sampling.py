"""DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, §3.2 and Algorithm 1): a group whose G rewards are all
equal has zero advantages and adds no policy gradient, so it is dropped and more prompts are sampled until the step
holds its ``prompts_per_step`` groups again.

One step on one process: round 0 samples the process's share of the step's prompts (the loop's
:class:`~posttrain.trainers.sampler.EpochSampler` order, untouched). Groups go in *blocks* of ``sample_block``
prompts (the two A/B orders of a judge task stay together); a block is dropped when every group in it has zero
spread (:func:`posttrain.ops.zero_spread_groups`). While a process holds fewer blocks than its share, another round
samples as many new blocks as it lacks, up to ``rl.max_sampling_rounds`` rounds in all (the first included); the
processes agree on each further round (the largest shortfall), so their collectives stay matched. Under FSDP, whose
processes generate together, every process samples the largest shortfall and keeps what it lacks.

Where the extra prompts come from: a permutation of the prompt blocks that round 0 of the step did not use, drawn
from a generator seeded by ``(seed, step)``; round k on process r takes the next blocks of its own slice of that
permutation (slice ``(k − 1)·world + r`` of ``share`` blocks), wrapping around when the data runs out. The draw
depends only on the seed, the step and the step's prompts, so a resumed run samples the same prompts, and the
epoch order (what a checkpoint records) is not consumed by it.

When the last round leaves a process with no block, it trains on its round-0 groups (zero advantages: only the KL
and entropy terms move the weights, as without dynamic sampling) rather than on nothing, so that every process has
a micro-batch; ``dropped_groups`` counts the groups that were sampled and not trained on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from posttrain.ops import zero_spread_groups
from posttrain.rewards.scoring import RewardBatch
from posttrain.rollout import Generation
from posttrain.trainers.distributed import Processes

# (prompts, round) → this process's generations for those prompts (G per prompt, prompt_index into them) and scores
SampleRound = Callable[[list[int], int], tuple[list[Generation], RewardBatch]]


@dataclass
class SampledGroups:
    """The groups one process trains on in a step: ``generations[i].prompt_index`` indexes ``prompts`` (dataset
    indices); ``scored`` holds their rewards; ``rounds`` the extra rounds run (the same on every process) and
    ``dropped`` the groups this process sampled and does not train on."""

    generations: list[Generation]
    prompts: list[int]
    scored: RewardBatch
    rounds: int
    dropped: int


def refill_prompts(num_examples: int, block: int, seed: int, step: int, used: list[int], slot: int, quota: int,
                   count: int) -> list[int]:
    """``count`` prompts (whole blocks) for slot ``slot = (round − 1)·world + rank`` of a step: blocks of the
    permutation seeded by ``(seed, step)`` of the blocks not in ``used``, starting at ``slot·quota`` (module
    docstring); all blocks when ``used`` covers the data."""
    used_blocks = {index // block for index in used}
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    order = [b for b in torch.randperm(num_examples // block, generator=generator).tolist() if b not in used_blocks]
    if not order:
        order = torch.randperm(num_examples // block, generator=generator).tolist()
    start = slot * (quota // block)
    blocks = [order[(start + i) % len(order)] for i in range(count // block)]
    return [b * block + offset for b in blocks for offset in range(block)]


def fill_groups(sample: SampleRound, share: list[int], used: list[int], processes: Processes, group_size: int,
                block: int, max_rounds: int, draw: Callable[[int, int, int], list[int]]) -> SampledGroups:
    """Sample ``share``, drop zero-spread blocks and sample more (``draw(slot, quota, count)``, e.g.
    :func:`refill_prompts`) until this process holds ``len(share)`` prompts' groups or ``max_rounds`` rounds ran."""
    quota = len(share)
    kept: list[tuple[list[Generation], list[int], RewardBatch, list[int]]] = []  # per round: its kept rows
    first: tuple[list[Generation], list[int], RewardBatch] | None = None
    held = sampled = rounds = 0
    prompts = share
    errors: dict[str, int] = {}
    while True:
        generations, scored = sample(prompts, rounds) if prompts else ([], None)
        if scored is not None:
            first = first or (generations, prompts, scored)
            for label, count in scored.errors.items():
                errors[label] = errors.get(label, 0) + count
            keep_blocks = _informative_blocks(scored.total, group_size, block)[: (quota - held) // block]
            rows = [i for b in keep_blocks for i in range(b * block * group_size, (b + 1) * block * group_size)]
            kept.append((generations, prompts, scored, rows))
            held += len(keep_blocks) * block
            sampled += len(prompts)
        shortfall = processes.max_count(quota - held)
        if shortfall == 0 or rounds + 1 >= max_rounds:
            break
        rounds += 1
        count = shortfall if processes.lockstep else quota - held
        prompts = draw((rounds - 1) * processes.world_size + processes.rank, quota, count) if count else []
    if held == 0:  # nothing kept: the first round's groups (zero advantages) rather than no micro-batch
        generations, prompts, scored = first
        kept = [(generations, prompts, scored, list(range(len(generations))))]
        held = len(prompts)
    return SampledGroups(*_merged(kept, errors), rounds=rounds, dropped=sampled - held)


def _informative_blocks(rewards: torch.Tensor, group_size: int, block: int) -> list[int]:
    """The blocks (``block`` consecutive groups) in which some group's rewards differ."""
    flat = zero_spread_groups(rewards, group_size).view(-1, block).all(dim=1)
    return [b for b, flat_block in enumerate(flat.tolist()) if not flat_block]


def _merged(kept, errors: dict[str, int]) -> tuple[list[Generation], list[int], RewardBatch]:
    """The kept rows of every round as one batch: generations re-indexed into one prompt list, their rewards."""
    generations: list[Generation] = []
    prompts: list[int] = []
    totals, components, extra = [], {}, {}
    for round_generations, round_prompts, scored, rows in kept:
        renumbered: dict[int, int] = {}
        for row in rows:
            g = round_generations[row]
            if g.prompt_index not in renumbered:
                renumbered[g.prompt_index] = len(prompts)
                prompts.append(round_prompts[g.prompt_index])
            generations.append(dataclasses.replace(g, prompt_index=renumbered[g.prompt_index]))
        totals.append(scored.total[rows])
        for label, values in scored.components.items():
            components.setdefault(label, []).extend(values[row] for row in rows)
        extra = scored.extra  # the stateful rewards' metrics of the last scored round
    return generations, prompts, RewardBatch(total=torch.cat(totals), components=components, errors=errors,
                                             extra=extra)
