"""Batching: padding, first-fit packing, positions and masks, collation, token-budget splits, and no attention across packed examples."""

from __future__ import annotations

import pytest
import torch

from posttrain.data import (
    Example,
    PackedRow,
    collate,
    make_task,
    micro_batches,
    model_inputs,
    pack_examples,
    pad_sequences,
    padded_batch,
    token_budget_groups,
    tokenize_sft,
    validate_records,
)
from posttrain.errors import DataError
from posttrain.models import tiny_model, tiny_tokenizer


def example(length: int, start: int = 10, where: str = "") -> Example:
    ids = list(range(start, start + length))
    return Example(input_ids=ids, loss_mask=[1] * length, where=where or f"e{length}")


def test_first_fit_packing_in_order():
    rows = pack_examples([example(n) for n in (5, 4, 3, 2, 6)], max_length=8)
    assert [row.seq_lengths for row in rows] == [[5, 3], [4, 2], [6]]
    assert [row.wheres for row in rows] == [["e5", "e3"], ["e4", "e2"], ["e6"]]
    assert rows[0].boundaries == [(0, 5), (5, 8)]


def test_rows_keep_every_example_with_restarting_positions_and_untrained_first_tokens():
    examples = [example(n, start=3 * n, where=f"x{i}") for i, n in enumerate((7, 1, 9, 4, 4, 12, 2, 3))]
    rows = pack_examples(examples, max_length=12)
    assert all(len(row) <= 12 for row in rows)
    by_where = {ex.where: ex for ex in examples}
    seen = []
    for row in rows:
        assert len(row.input_ids) == len(row.loss_mask) == len(row.position_ids) == sum(row.seq_lengths)
        for (start, end), where in zip(row.boundaries, row.wheres, strict=True):
            original = by_where[where]
            assert row.input_ids[start:end] == original.input_ids
            assert row.position_ids[start:end] == list(range(end - start))
            assert row.loss_mask[start] == 0 and row.loss_mask[start + 1 : end] == original.loss_mask[1:]
            seen.append(where)
    assert sorted(seen) == sorted(by_where)


def test_an_example_longer_than_a_row_is_an_error():
    with pytest.raises(DataError, match="does not fit in a packed row of 4"):
        pack_examples([example(3), example(5, where="long.jsonl:2")], max_length=4)


def test_collate_pads_on_the_right():
    row = PackedRow()
    row.add(example(3, start=10))
    row.add(Example(input_ids=[20, 21], loss_mask=[1, 1]))
    batch = collate([row, example(2, start=30)], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21], [30, 31, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 1], [0, 1, 0, 0, 0]]
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    assert set(model_inputs(batch)) == {"input_ids", "position_ids", "use_cache"}
    assert model_inputs(batch)["use_cache"] is False


def per_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1: log_softmax of the logits at t-1 gathered at token t."""
    logprobs = torch.log_softmax(logits[:-1].double(), dim=-1)
    return logprobs.gather(-1, input_ids[1:, None]).squeeze(-1)


@pytest.fixture(scope="module")
def tokenized_examples():
    tokenizer = tiny_tokenizer()
    records = validate_records(make_task("arithmetic", 8, seed=3, levels="1,2")).records
    examples = tokenize_sft(records, tokenizer, max_length=512).examples
    return examples + [example(1, start=40), example(2, start=50)]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_log_probs_equal_the_examples_alone(tokenized_examples, attention):
    model = tiny_model()
    model.set_attn_implementation(attention)
    model.eval()
    rows = pack_examples(tokenized_examples, max_length=400)
    assert any(len(row.seq_lengths) >= 3 for row in rows)
    batch = collate(rows, pad_id=tiny_tokenizer().pad_token_id)
    compared = 0
    with torch.no_grad():
        packed_logits = model(**model_inputs(batch)).logits
        for index, row in enumerate(rows):
            for start, end in row.boundaries:
                ids = batch["input_ids"][index, start:end]
                alone = per_token_logprobs(model(input_ids=ids[None]).logits[0], ids)
                packed = per_token_logprobs(packed_logits[index, start:end], ids)
                torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
                compared += end - start - 1
    assert compared == sum(len(example) - 1 for example in tokenized_examples)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padded_batch_of_single_examples_equals_the_examples_alone(tokenized_examples, attention):
    model = tiny_model()
    model.set_attn_implementation(attention)
    model.eval()
    examples = tokenized_examples[:4]
    batch = collate(examples, pad_id=tiny_tokenizer().pad_token_id)
    with torch.no_grad():
        batched_logits = model(**model_inputs(batch)).logits
        for index, item in enumerate(examples):
            ids = torch.tensor(item.input_ids)
            alone = per_token_logprobs(model(input_ids=ids[None]).logits[0], ids)
            batched = per_token_logprobs(batched_logits[index, : len(item)], ids)
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_token_budget_groups_bound_padded_tokens_and_keep_every_item():
    lengths = [50, 120, 80, 75, 300, 10, 60]
    groups = token_budget_groups(lengths, max_tokens=200)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        longest = max(lengths[i] for i in group)
        assert len(group) == 1 or len(group) * longest <= 200
    assert [4] in groups  # longer than the budget: alone
    assert groups[0] == [4] and groups[1] == [1]  # longest first; 2 x 120 > 200
    assert groups[2] == [2, 3]  # 2 x 80 <= 200 < 3 x 80
    with pytest.raises(ValueError):
        token_budget_groups(lengths, 0)


def test_pad_sequences_right_and_left():
    rows = [[5, 6, 7], [8], []]
    assert pad_sequences(rows, 0).tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert pad_sequences(rows, 9, left=True).tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]]
    assert pad_sequences([[1]], 0, width=3).tolist() == [[1, 0, 0]]


def test_padded_batch_masks_and_positions():
    batch = padded_batch([[5, 6, 7], [8]], pad_id=2)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]


def test_micro_batches_chunk_in_order_then_split_by_token_budget():
    items = ["a", "b", "c", "d", "e"]
    lengths = [10, 100, 90, 20, 30]
    assert micro_batches(items, lengths, batch_size=2) == [["a", "b"], ["c", "d"], ["e"]]
    # each chunk of 3 split longest first into passes of rows x longest <= 200
    assert micro_batches(items, lengths, batch_size=3, token_budget=200) == [["b", "c"], ["a"], ["e", "d"]]
    with pytest.raises(ValueError):
        micro_batches(items, lengths, batch_size=0)
