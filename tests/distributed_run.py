"""Runs recipes one after another in every process of a launch (``accelerate launch -m tests.distributed_run``).

Argument: a JSON list of runs, each a list of ``key=value`` overrides. GRPO and distillation runs sample from
:class:`ScriptedEngine`, whose completions depend only on the prompt and the sample index, so one process and
several processes see the same rollouts and their updates can be compared exactly.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys

from posttrain.config import load_config
from posttrain.rollout import Generation
from posttrain.rollout.engines import EngineWeights
from posttrain.trainers import distill, rl
from posttrain.trainers.run import train


class ScriptedEngine:
    """Completions drawn from a generator seeded by (prompt tokens, sample index): the same on any process."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompt_ids: list[list[int]], params) -> list[Generation]:
        generations = []
        for index, prompt in enumerate(prompt_ids):
            for sample in range(params.n):
                draw = random.Random(hash((tuple(prompt), sample)) & 0xFFFFFFFF)
                ids = [draw.randrange(40, 120) for _ in range(draw.randrange(2, params.max_new_tokens + 1))]
                text = self.tokenizer.decode(ids)
                generations.append(Generation(index, sample, list(prompt), ids, [0.0] * len(ids), text, "length"))
        return generations

    def close(self) -> None:
        pass


def scripted_rollouts(config, model, tokenizer, processes):
    engine = ScriptedEngine(tokenizer)
    return engine, EngineWeights(engine)


@contextlib.contextmanager
def scripted():
    """RL and distillation sample from :class:`ScriptedEngine` inside the block."""
    originals = rl.rollout_engine, distill.rollout_engine
    rl.rollout_engine = distill.rollout_engine = scripted_rollouts
    try:
        yield
    finally:
        rl.rollout_engine, distill.rollout_engine = originals


def main(runs: list[list[str]]) -> None:
    with scripted():
        for overrides in runs:
            train(load_config(None, overrides))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
