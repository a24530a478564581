"""Deterministic, resumable order of training examples.

Epoch ``e`` visits the examples in ``randperm(n)`` drawn from a generator seeded with
``seed + e``; with ``block = b > 1`` it permutes the ``n / b`` consecutive blocks instead, so examples
``b·i … b·i + b − 1`` stay together (the two A/B orders of a judge task). Global batches are consecutive slices of that order that continue into the next
epoch, so the position ``(epoch, cursor)`` is all a checkpoint needs to restore the data stream.
"""

from __future__ import annotations

import torch

from posttrain.errors import DataError


class EpochSampler:
    def __init__(self, num_examples: int, seed: int, shuffle: bool = True, block: int = 1):
        if num_examples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if num_examples % block:
            raise ValueError(f"{num_examples} examples do not divide into blocks of {block}")
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle
        self.block = block
        self.epoch = 0
        self.cursor = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_examples))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        blocks = torch.randperm(self.num_examples // self.block, generator=generator).tolist()
        return [b * self.block + offset for b in blocks for offset in range(self.block)]

    def next_batch(self, size: int) -> list[int]:
        """The next ``size`` example indices, crossing into the next epoch when this one runs out."""
        batch: list[int] = []
        while len(batch) < size:
            if self.cursor == self.num_examples:
                self.epoch += 1
                self.cursor = 0
                self._order = self._epoch_order(self.epoch)
            take = min(size - len(batch), self.num_examples - self.cursor)
            batch.extend(self._order[self.cursor : self.cursor + take])
            self.cursor += take
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "num_examples": self.num_examples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_examples"] != self.num_examples:
            raise DataError(f"the checkpoint was written for {state['num_examples']} training examples, the data now "
                            f"gives {self.num_examples}: the data (or what of it is kept) changed under the run",
                            fix="resume with the data and data settings the run started with, or start over "
                                "(train.resume=never) or as a new run (name=...)")
        self.seed = state["seed"]
        self.epoch = state["epoch"]
        self.cursor = state["cursor"]
        self._order = self._epoch_order(self.epoch)
