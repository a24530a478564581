"""Data: records in TRL's conventions, readers, validation, tokenization with loss masks, batching (padding,
packing, token-budget splits), synthetic tasks."""

from .batching import (
    PackedRow,
    collate,
    micro_batches,
    model_inputs,
    pack_examples,
    pad_sequences,
    padded_batch,
    token_budget_groups,
)
from .readers import RecordSet, read_records, validate_records, write_jsonl
from .records import KINDS, ROLES, is_conversational, normalize_record, prompt_text, reference_from_solution
from .tasks import TASK_PREFIX, TASKS, make_splits, make_task, make_task_file, source_records
from .tokenize import Example, TokenizedSet, encode_prompt, encode_prompts, tokenize_sft, trained_spans

__all__ = [
    "KINDS",
    "ROLES",
    "TASKS",
    "TASK_PREFIX",
    "Example",
    "PackedRow",
    "RecordSet",
    "TokenizedSet",
    "collate",
    "encode_prompt",
    "encode_prompts",
    "is_conversational",
    "make_splits",
    "make_task",
    "make_task_file",
    "micro_batches",
    "model_inputs",
    "normalize_record",
    "pack_examples",
    "pad_sequences",
    "padded_batch",
    "prompt_text",
    "source_records",
    "token_budget_groups",
    "read_records",
    "reference_from_solution",
    "tokenize_sft",
    "trained_spans",
    "validate_records",
    "write_jsonl",
]
