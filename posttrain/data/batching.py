"""Batching, written once: padding token rows into tensors, packing several examples into one row, collating
rows into model inputs, and splitting a batch into micro-batches by a padded-token budget.

:func:`pad_sequences` is the one place a ragged list of rows becomes a padded tensor (right-padded for training and
scoring, left-padded for generation); :func:`padded_batch` adds the attention mask and position ids of right-padded
rows; :func:`micro_batches` cuts a batch into forward passes of ``batch_size`` rows, each split longest first so
that ``rows × longest`` stays within a token budget (:func:`token_budget_groups`).

Packed examples must not attend to each other. transformers (5.x) does this without an explicit mask:
when a causal LM is called with ``attention_mask=None``, no cache and ``position_ids`` that restart at 0
inside a row, ``masking_utils.find_packed_sequence_indices`` splits the row into sequences wherever a
position does not follow the previous one by 1, and the sdpa and eager masks become block-diagonal causal
(each token attends to earlier tokens of its own example only); flash attention takes the same position ids
as variable-length sequences. Two conditions matter, and :func:`model_inputs` meets both:

- no ``attention_mask`` may be passed (with one, the detection is skipped). Rows are right-padded, so under
  causal attention no real token can see a pad token: the mask is not needed for correctness.
- ``use_cache=False``: with the default ``use_cache=True`` the model creates an (empty) cache, and with a
  cache the detection is skipped as well, so examples would attend across their boundaries.

Position ids restart at 0 for every example. Padding positions continue the numbering of the row's last
example, so padding never opens a new sequence. The first token of every example has loss mask 0: it must
never be predicted from the end of the previous example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from posttrain.errors import DataError

from .tokenize import Example

T = TypeVar("T")


def pad_sequences(rows: Sequence[Sequence[int]], value: int, width: int | None = None, *,
                  left: bool = False) -> torch.Tensor:
    """``[len(rows), width]`` long tensor of the rows filled up with ``value`` to ``width`` (default: the longest
    row), on the right, or on the left with ``left`` (prompts for generation)."""
    width = max(len(row) for row in rows) if width is None else width
    padded = torch.full((len(rows), width), value, dtype=torch.long)
    for index, row in enumerate(rows):
        start = width - len(row) if left else 0
        padded[index, start : start + len(row)] = torch.tensor(list(row), dtype=torch.long)
    return padded


def padded_batch(rows: Sequence[Sequence[int]], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` (1 on real tokens) and ``position_ids`` (``0 … width − 1``
    in every row) of token rows, on ``device`` when given."""
    input_ids = pad_sequences(rows, pad_id)
    count, width = input_ids.shape
    batch = {"input_ids": input_ids, "attention_mask": pad_sequences([[1] * len(row) for row in rows], 0, width),
             "position_ids": torch.arange(width).expand(count, width)}
    return batch if device is None else {key: value.to(device) for key, value in batch.items()}


@dataclass
class PackedRow:
    """Several examples laid end to end: ids, loss mask, per-example positions and the example lengths."""

    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    seq_lengths: list[int] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def boundaries(self) -> list[tuple[int, int]]:
        """``(start, end)`` of each example inside the row."""
        spans, start = [], 0
        for length in self.seq_lengths:
            spans.append((start, start + length))
            start += length
        return spans

    def add(self, example: Example) -> None:
        """Append an example: positions restart at 0 and its first token is not a target."""
        self.input_ids.extend(example.input_ids)
        self.loss_mask.extend([0, *example.loss_mask[1:]])
        self.position_ids.extend(range(len(example)))
        self.seq_lengths.append(len(example))
        self.wheres.append(example.where)


def pack_examples(examples: Sequence[Example], max_length: int) -> list[PackedRow]:
    """Pack examples greedily, first fit: each example goes into the first row with room for it, in order.

    Every row holds at most ``max_length`` tokens. An example longer than ``max_length`` is an error (tokenize
    with the same ``max_length`` so that over-long examples are truncated or dropped first).
    """
    rows: list[PackedRow] = []
    free: list[int] = []  # free[i] = room left in rows[i]
    for example in examples:
        if len(example) > max_length:
            raise DataError(
                f"example of {len(example)} tokens does not fit in a packed row of {max_length}",
                where=example.where,
                fix="tokenize with the same max_length as packing (over-long examples are then truncated or dropped)",
            )
        if len(example) == 0:
            raise DataError("empty example (no tokens)", where=example.where, fix="remove the example")
        target = next((i for i, room in enumerate(free) if room >= len(example)), None)
        if target is None:
            rows.append(PackedRow())
            free.append(max_length)
            target = len(rows) - 1
        rows[target].add(example)
        free[target] -= len(example)
    return rows


def collate(items: Sequence[PackedRow | Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows (or single examples) into a batch of ``[batch, longest]`` tensors.

    Returns ``input_ids``, ``attention_mask`` (1 on real tokens, 0 on padding; for counting tokens — see
    :func:`model_inputs` for why it is not given to the model), ``position_ids`` (restarting at 0 per example)
    and ``loss_mask`` (0 on padding and on the first token of every example).
    """
    if not items:
        raise ValueError("collate needs at least one row")
    rows = [_as_row(item) for item in items]
    input_ids = pad_sequences([row.input_ids for row in rows], pad_id)
    width = input_ids.shape[1]
    positions = []
    for row in rows:  # padding continues the numbering of the row's last example: it never opens a sequence
        following = row.position_ids[-1] + 1 if len(row) else 0
        positions.append([*row.position_ids, *range(following, following + width - len(row))])
    return {
        "input_ids": input_ids,
        "attention_mask": pad_sequences([[1] * len(row) for row in rows], 0, width),
        "position_ids": pad_sequences(positions, 0, width),
        "loss_mask": pad_sequences([row.loss_mask for row in rows], 0, width),
    }


def model_inputs(batch: dict[str, torch.Tensor]) -> dict:
    """The keyword arguments for a causal LM's forward on a collated batch.

    ``input_ids`` and ``position_ids`` only, with ``use_cache=False`` (see the module docstring): this keeps
    packed examples apart and is exact for right-padded rows.
    """
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}


def _as_row(item: PackedRow | Example) -> PackedRow:
    if isinstance(item, PackedRow):
        return item
    row = PackedRow()
    row.add(item)
    return row


def token_budget_groups(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split items into micro-batches whose padded size ``rows × longest`` stays within ``max_tokens``.

    Items are taken longest first, so each micro-batch holds rows of similar length and little padding;
    an item longer than the budget gets a micro-batch of its own. Returns lists of indices into ``lengths``.
    With a loss normalized over the whole batch, the summed gradient does not depend on this split.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for index in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= max_tokens:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def micro_batches(items: Sequence[T], lengths: Sequence[int], batch_size: int, token_budget: int = 0,
                  min_parts: int = 0) -> list[list[T]]:
    """The forward passes of a batch: ``items`` in consecutive chunks of ``batch_size``, each split further by
    :func:`token_budget_groups` when ``token_budget`` is set (``lengths[i]``: the padded length ``items[i]``
    adds to a row, e.g. both sequences of a preference pair). With ``min_parts``, the pass of most padded
    tokens is halved until there are that many (or every pass holds one item): processes that must run the
    same number of passes (FSDP) agree on the largest count."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = len(items)
    chunks = [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]
    if token_budget:
        chunks = [[chunk[i] for i in group] for chunk in chunks
                  for group in token_budget_groups([lengths[i] for i in chunk], token_budget)]
    while len(chunks) < min_parts:
        splittable = [c for c in chunks if len(c) > 1]
        if not splittable:
            break
        largest = max(splittable, key=lambda c: len(c) * max(lengths[i] for i in c))
        at = chunks.index(largest)
        half = len(largest) // 2
        chunks[at:at + 1] = [largest[:half], largest[half:]]
    return [[items[i] for i in chunk] for chunk in chunks]
