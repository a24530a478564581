"""Turn a recipe's data sources into records: files, directories, hub datasets or synthetic tasks."""

from __future__ import annotations

from posttrain.config import DataConfig, DataSource
from posttrain.data import RecordSet, make_task, read_records, validate_records
from posttrain.data.master_keys import add_masterkey_negatives


def load_source(source: DataSource, *, kind: str, skip_invalid: bool, held_out: bool = False) -> RecordSet:
    """Records of one source. A synthetic task with ``held_out=True`` or ``split: held_out`` gives its held-out
    split, which never shares a question with the training split of the same task and seed."""
    if source.task is not None:
        options = {"levels": source.levels} if source.levels else {}
        split = "held_out" if held_out or source.split == "held_out" else "train"
        records = make_task(source.task, source.n, source.seed, split=split, **options)
        result = validate_records(records, kind=kind, source=f"task:{source.task}:{split}")
    else:
        result = read_records(source.path, split=source.split, skip_invalid=skip_invalid, kind=kind)
    if source.limit is not None:
        result.records = result.records[: source.limit]
    return result


def training_records(data: DataConfig, kind: str) -> tuple[RecordSet, dict]:
    """The training records of ``data.train`` read as ``kind``, with ``data.masterkey_negatives`` added
    (:func:`posttrain.data.master_keys.add_masterkey_negatives`), and the start of the run's data summary."""
    records = load_source(data.train, kind=kind, skip_invalid=data.skip_invalid)
    read = len(records.records)
    if data.masterkey_negatives:
        records.records = add_masterkey_negatives(records.records, data.masterkey_negatives, data.train.seed)
    summary = {"source": records.source, "examples": len(records.records), "skipped": records.skipped,
               "truncated": 0, "dropped": 0, "skipped_records": records.problems}
    if data.masterkey_negatives:
        summary["masterkey_negatives"] = len(records.records) - read
    return records, summary


def eval_source(data: DataConfig) -> tuple[DataSource | None, bool]:
    """The evaluation source and whether it is a task's held-out split (used when no eval source is given)."""
    if data.eval is not None:
        return data.eval, False
    if data.train.task is not None:
        return data.train.model_copy(update={"n": 100}), True
    return None, False
