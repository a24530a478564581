"""Reading and writing record files.

:func:`read_records` reads ``.jsonl`` (one JSON object a line), ``.json`` (a list of objects, or an object
whose ``data`` field is that list), ``.parquet``, a local Hugging Face ``datasets`` directory (written by
``save_to_disk``), or a hub dataset name (``owner/name`` or ``owner/name:config``; from the hub, or from the
local hub cache when offline or the hub does not answer — an unavailable one fails at once, see
:mod:`posttrain.hub`).
Each record is validated and normalized by :func:`posttrain.data.records.normalize_record` and gets
``_where``: ``file:line`` for JSON Lines, ``file:[index]`` for the other formats.

Files are read as bytes and decoded line by line, so an invalid byte is reported with its line number.
With ``skip_invalid=True`` an invalid record is skipped, counted and described in ``RecordSet.problems``
instead of raising; nothing is dropped silently. A file that cannot be parsed as a whole (a broken
``.json`` or ``.parquet``) always raises.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.errors import DataError, first_line, location
from posttrain.hub import locate_hub_repo, looks_like_path

from .records import check_kind, normalize_record

JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet")
LOCAL_DATA_ALTERNATIVE = "a local .jsonl, .json or .parquet file, or a directory written by datasets' save_to_disk"


@dataclass
class RecordSet:
    """Validated records and an account of what was skipped.

    ``problems`` has one line per skipped record: ``file:line:field: what was wrong``.
    """

    records: list[dict]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)


def read_records(
    source: str | os.PathLike,
    *,
    split: str = "train",
    skip_invalid: bool = False,
    kind: str = "sft",
) -> RecordSet:
    """Read, validate and normalize the records of ``kind`` (``sft``, ``preference``, ``unpaired``, ``prompt`` or ``regression``).

    ``split`` selects the split of a ``DatasetDict`` directory or of a hub dataset.
    """
    check_kind(kind)
    path = Path(source)
    name = str(source)
    if path.is_dir():
        rows, name = _dataset_directory_rows(path, split)
    elif path.is_file():
        rows = _file_rows(path)
    elif looks_like_path(name):
        raise DataError(
            "file not found",
            where=name,
            fix="check the path (relative paths are resolved from the current directory)",
        )
    else:
        rows, name = _hub_rows(name, split)
    return _collect(rows, kind=kind, skip_invalid=skip_invalid, source=name)


def validate_records(
    records: Iterable[Any],
    *,
    kind: str = "sft",
    skip_invalid: bool = False,
    source: str = "<records>",
) -> RecordSet:
    """Validate and normalize records already in memory; their places are ``source:[index]``."""
    check_kind(kind)
    rows = ((location(source, f"[{index}]"), record) for index, record in enumerate(records))
    return _collect(rows, kind=kind, skip_invalid=skip_invalid, source=source)


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write records as UTF-8 JSON Lines, one object a line, keys in insertion order.

    The output depends only on the records, so the same records give byte-identical files. The file is
    written to a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    os.replace(temporary, path)
    return path


# ---------------------------------------------------------------------------------------------- sources

Row = tuple[str, Any]  # (place, raw record) where a raw record that could not be parsed is a DataError


def _file_rows(path: Path) -> Iterator[Row]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise DataError(
        f"unsupported file type {suffix or '(no suffix)'!r}",
        where=str(path),
        fix=f"convert the data to one of {', '.join(SUFFIXES)} or a datasets directory (save_to_disk)",
    )


def read_jsonl_objects(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """Every line of a JSONL file as ``(file:line, object)``; the first unreadable line or non-object raises its
    :class:`~posttrain.errors.DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", where=str(path), fix="check the path")
    objects = []
    for where, value in _jsonl_rows(path):
        if isinstance(value, DataError):
            raise value
        if not isinstance(value, dict):
            raise DataError(f"expected a JSON object, got {type(value).__name__}", where=where,
                            fix="write one JSON object per line")
        objects.append((where, value))
    return objects


def _jsonl_rows(path: Path) -> Iterator[Row]:
    data = _read_bytes(path)
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = location(str(path), number)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            yield (
                where,
                DataError(
                    f"line is not valid UTF-8 (byte 0x{line[error.start]:02x} at column {error.start + 1})",
                    where=where,
                    fix="re-save the file as UTF-8",
                ),
            )
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as error:
            yield where, _malformed_json(error, where)
            continue
        yield where, value


def _json_rows(path: Path) -> Iterator[Row]:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"file is not valid UTF-8 (byte 0x{data[error.start]:02x})",
            where=location(str(path), line),
            fix="re-save the file as UTF-8",
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"malformed JSON: {error.msg} (column {error.colno})",
            where=location(str(path), error.lineno),
            fix="fix the JSON syntax at that place",
        ) from None
    except (ValueError, RecursionError) as error:
        raise _malformed_json(error, str(path)) from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(
            "a .json file must hold a list of records, or an object whose 'data' field is that list",
            where=str(path),
            fix="wrap the records in [...], or write them as JSON Lines (.jsonl)",
        )
    return ((location(str(path), f"[{index}]"), record) for index, record in enumerate(value))


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow
    import pyarrow.parquet

    try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        raise DataError(
            f"cannot read Parquet file: {first_line(error)}",
            where=str(path),
            fix="check that the file is a complete Parquet file",
        ) from None
    return ((location(str(path), f"[{index}]"), record) for index, record in enumerate(rows))


def _dataset_directory_rows(path: Path, split: str) -> tuple[Iterator[Row], str]:
    import datasets

    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(
            "directory is not a saved datasets directory (no dataset_dict.json or state.json)",
            where=str(path),
            fix="save the data with datasets' save_to_disk, or pass a .jsonl, .json or .parquet file",
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as error:
        raise DataError(
            f"cannot load datasets directory: {first_line(error)}",
            where=str(path),
            fix="save the data again with save_to_disk",
        ) from None
    name = str(path)
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, name)
        name = f"{path}[{split}]"
    return ((location(name, f"[{index}]"), record) for index, record in enumerate(loaded.to_list())), name


def _hub_rows(name: str, split: str) -> tuple[Iterator[Row], str]:
    """Rows of hub dataset ``owner/name`` or ``owner/name:config``: fetched from the hub, or read from its
    snapshot in the local hub cache when offline mode is set or the hub does not answer (see
    :func:`posttrain.hub.locate_hub_repo`, which raises at once when neither can provide it)."""
    import datasets

    repository, _, config = name.partition(":")
    where_from = locate_hub_repo(repository, repo_type="dataset", error_type=DataError, where=name,
                                 local_alternative=LOCAL_DATA_ALTERNATIVE, offline=datasets.config.HF_HUB_OFFLINE)
    try:
        loaded = datasets.load_dataset(where_from, config or None, split=split)
    except Exception as error:  # the hub client raises many kinds of errors; each becomes one message
        raise DataError(
            f"no local file or directory has this name, and the Hugging Face hub could not provide it "
            f"({type(error).__name__}: {first_line(error)})",
            where=name,
            fix=f"check the path, or pass {LOCAL_DATA_ALTERNATIVE}",
        ) from None
    source = f"{name}[{split}]"
    return ((location(source, f"[{index}]"), record) for index, record in enumerate(loaded.to_list())), source


def _pick_split(loaded: Any, split: str, name: str) -> Any:
    if split not in loaded:
        raise DataError(
            f"no split {split!r} (splits: {', '.join(loaded.keys())})",
            where=name,
            fix="choose one of the splits listed",
        )
    return loaded[split]


# ---------------------------------------------------------------------------------------------- helpers


def _collect(rows: Iterable[Row], *, kind: str, skip_invalid: bool, source: str) -> RecordSet:
    result = RecordSet(records=[], source=source)
    for where, raw in rows:
        try:
            if isinstance(raw, DataError):
                raise raw
            result.records.append(normalize_record(raw, kind, where))
        except DataError as error:
            if not skip_invalid:
                raise
            result.skipped += 1
            result.problems.append(f"{error.where or where}: {error.what}")
    return result


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(
            f"cannot read file: {error.strerror}", where=str(path), fix="check the path and permissions"
        ) from None


def _malformed_json(error: Exception, where: str) -> DataError:
    if isinstance(error, json.JSONDecodeError):
        what = f"malformed JSON: {error.msg} (column {error.colno})"
    elif isinstance(error, RecursionError):
        what = "malformed JSON: nested too deeply"
    else:
        what = f"malformed JSON: {first_line(error)}"
    return DataError(what, where=where, fix="write one complete JSON object on each line")
