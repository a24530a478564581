"""Tokenization: chat templates, completion-only masks, plain strings, over-long policies, prompts."""

from __future__ import annotations

import time

import pytest

from posttrain.data import (
    encode_prompt,
    encode_prompts,
    make_task,
    tokenize_sft,
    trained_spans,
    validate_records,
)
from posttrain.errors import DataError, ModelError
from posttrain.models import tiny_tokenizer

END = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def sft(*records, kind="sft"):
    return validate_records(records, kind=kind, source="mem.jsonl").records


def text(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_chat_mask_covers_exactly_the_assistant_answer_and_end_token(tokenizer):
    records = sft({"question": "Tom has 3 apples and buys 5 more. How many?", "answer": "3 + 5 = 8\n#### 8"})
    example = tokenize_sft(records, tokenizer, max_length=512).examples[0]
    assert trained_spans(example, tokenizer) == ["3 + 5 = 8\n#### 8" + END]
    first_target = example.loss_mask.index(1)
    assert example.input_ids[:first_target] == encode_prompt(records[0], tokenizer)
    assert text(tokenizer, example.input_ids[:first_target]).endswith("<|im_start|>assistant\n")
    # the newline the template writes after <|im_end|> is template text, not a target
    assert text(tokenizer, example.input_ids[-1:]) == "\n" and example.loss_mask[-1] == 0
    assert example.where == "mem.jsonl:[0]"


def test_multi_turn_masks_every_assistant_turn_and_nothing_else(tokenizer):
    messages = [
        {"role": "system", "content": "You add."},
        {"role": "user", "content": "1+1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2+2"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "thanks"},
    ]
    example = tokenize_sft(sft({"messages": messages}), tokenizer, 512).examples[0]
    assert trained_spans(example, tokenizer) == ["2" + END, "4" + END]
    untrained = [t for t, m in zip(example.input_ids, example.loss_mask, strict=True) if not m]
    assert "You add." in text(tokenizer, untrained) and "thanks" in text(tokenizer, untrained)


def test_assistant_turns_inside_the_prompt_are_not_trained(tokenizer):
    few_shot = [
        {"role": "user", "content": "1+1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "3+3"},
    ]
    record = {"prompt": few_shot, "completion": [{"role": "assistant", "content": "6"}]}
    example = tokenize_sft(sft(record), tokenizer, 512).examples[0]
    assert trained_spans(example, tokenizer) == ["6" + END]


def test_template_with_a_default_system_prompt(tokenizer):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    example = tokenize_sft(sft({"prompt": "hi", "completion": "ho"}), tokenizer, 512).examples[0]
    assert text(tokenizer, example.input_ids) == "hiho" + END  # plain strings use no template
    records = sft({"question": "hi", "answer": "ho"})
    example = tokenize_sft(records, tokenizer, 512).examples[0]
    assert trained_spans(example, tokenizer) == ["ho" + END]
    assert text(tokenizer, example.input_ids).startswith("<|im_start|>system\nYou are helpful.")


def test_template_that_rewrites_past_turns_is_rejected(tokenizer):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = (  # hides every assistant turn but the last, as some reasoning templates do
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\n...<|im_end|>\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(DataError, match=r"mem\.jsonl:\[0\]:messages\[1\]: .*prefix property"):
        tokenize_sft(sft({"messages": messages}), tokenizer, 512)


def test_tokenizer_that_merges_across_the_turn_boundary_is_rejected():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocabulary = {"<|end|>": 0, **{symbol: i + 1 for i, symbol in enumerate(symbols)}}
    vocabulary[":Ġ"] = len(vocabulary)  # one merge, ": " -> a single token
    backend = Tokenizer(models.BPE(vocab=vocabulary, merges=[(":", "Ġ")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|end|>")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ':' + m['content'] + '<|end|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    )
    fine = sft({"question": "q", "answer": "a"})
    assert trained_spans(tokenize_sft(fine, tokenizer, 64).examples[0], tokenizer) == ["a<|end|>"]
    merged = sft({"question": "q", "answer": " a"})  # "assistant:" + " a" tokenizes as "assistant" ": " "a"
    with pytest.raises(DataError, match="merges text across the boundary"):
        tokenize_sft(merged, tokenizer, 64)


def test_plain_strings_are_prompt_then_completion_then_eos(tokenizer):
    records = sft({"prompt": "2+2=", "completion": "4"})
    example = tokenize_sft(records, tokenizer, 64).examples[0]
    prompt_ids = tokenizer("2+2=")["input_ids"]
    completion_ids = tokenizer("4", add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert example.loss_mask == [0] * len(prompt_ids) + [1] * (len(completion_ids) + 1)
    assert encode_prompt(records[0], tokenizer) == prompt_ids


def test_completion_only_false_trains_on_every_token_but_the_first(tokenizer):
    records = sft({"question": "q?", "answer": "a"}, {"prompt": "p", "completion": "c"})
    for example in tokenize_sft(records, tokenizer, 512, completion_only=False).examples:
        assert example.loss_mask == [0] + [1] * (len(example) - 1)


def test_overlong_truncate_keeps_the_prompt_and_counts(tokenizer):
    records = sft(
        {"prompt": "p" * 5, "completion": "c" * 3},  # 9 tokens: fits
        {"prompt": "p" * 5, "completion": "c" * 20},  # 26 tokens: truncated to 12
        {"prompt": "p" * 12, "completion": "c"},  # prompt alone fills max_length: dropped
        {"prompt": "p" * 11, "completion": "cc"},  # one completion token survives
    )
    result = tokenize_sft(records, tokenizer, max_length=12, overlong="truncate")
    assert (result.truncated, result.dropped, len(result)) == (2, 1, 3)
    assert [len(example) for example in result.examples] == [9, 12, 12]
    truncated = result.examples[1]
    assert truncated.input_ids[:5] == tokenizer("ppppp")["input_ids"]
    assert truncated.loss_mask == [0] * 5 + [1] * 7
    assert result.examples[2].loss_mask == [0] * 11 + [1]
    assert [example.where for example in result.examples] == [
        "mem.jsonl:[0]",
        "mem.jsonl:[1]",
        "mem.jsonl:[3]",
    ]


def test_overlong_drop_counts(tokenizer):
    records = sft(*({"prompt": "p", "completion": "c" * n} for n in (1, 5, 10, 20)))
    result = tokenize_sft(records, tokenizer, max_length=8, overlong="drop")
    assert (result.truncated, result.dropped) == (0, 2)
    assert [len(example) for example in result.examples] == [3, 7]


def test_conversations_need_a_chat_template(tokenizer):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ModelError, match="no chat template"):
        tokenize_sft(sft({"question": "q", "answer": "a"}), tokenizer, 64)


def test_unnormalized_records_are_refused(tokenizer):
    with pytest.raises(DataError, match="read_records"):
        tokenize_sft([{"question": "q", "answer": "a"}], tokenizer, 64)


def test_encode_prompt_forms(tokenizer):
    chat = encode_prompt({"question": "What is 2+2?"}, tokenizer)
    assert text(tokenizer, chat) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    records = sft(
        {"prompt": "plain"}, {"question": "q"}, {"prompt": [{"role": "user", "content": "m"}]}, kind="prompt"
    )
    assert encode_prompts(records, tokenizer) == [encode_prompt(record, tokenizer) for record in records]
    assert encode_prompts(records, tokenizer)[0] == tokenizer("plain")["input_ids"]


def test_two_thousand_examples_tokenize_quickly(tokenizer):
    records = validate_records(make_task("arithmetic", 2000, seed=0)).records
    start = time.perf_counter()
    result = tokenize_sft(records, tokenizer, max_length=512)
    elapsed = time.perf_counter() - start
    assert len(result) == 2000 and result.truncated == result.dropped == 0
    assert elapsed < 6.0, f"tokenizing 2000 examples took {elapsed:.1f} s"
    for example, record in zip(result.examples[:50], records[:50], strict=True):
        assert trained_spans(example, tokenizer) == [record["answer"] + END]
