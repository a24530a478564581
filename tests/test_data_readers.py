"""Readers and validation: every format, TRL record conventions, error messages, skip counting, fuzzing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.data import read_records, reference_from_solution, validate_records, write_jsonl
from posttrain.errors import ConfigError, DataError

GSM8K_ANSWER = "She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = 18 dollars.\n#### 1,018"
CHAT_PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
CHAT_COMPLETION = [{"role": "assistant", "content": "4"}]


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def raises_at(call, *parts: str) -> DataError:
    """Run ``call``, expect a DataError whose message contains every one of ``parts``."""
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return caught.value


# ------------------------------------------------------------------------------------------------ formats


SFT_RECORDS = [
    {"prompt": "Say hi.", "completion": "hi", "id": 7},
    {"prompt": CHAT_PROMPT, "completion": CHAT_COMPLETION},
    {"messages": [*CHAT_PROMPT, *CHAT_COMPLETION]},
    {"question": "Janet has 16 eggs...", "answer": GSM8K_ANSWER},
]


def check_sft_records(result, source_name: str) -> None:
    assert len(result) == 4 and result.skipped == 0 and result.problems == []
    plain, chat, messages, gsm8k = result.records
    assert plain["prompt"] == "Say hi." and plain["completion"] == "hi" and plain["id"] == 7
    assert chat["prompt"] == CHAT_PROMPT and chat["completion"] == CHAT_COMPLETION
    assert messages["messages"] == [*CHAT_PROMPT, *CHAT_COMPLETION]
    assert gsm8k["prompt"] == [{"role": "user", "content": "Janet has 16 eggs..."}]
    assert gsm8k["completion"] == [{"role": "assistant", "content": GSM8K_ANSWER}]
    assert gsm8k["reference"] == "1018"
    assert "reference" not in plain
    assert all(record["_where"].startswith(source_name) for record in result.records)


def test_jsonl_records_get_line_numbers(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [
        json.dumps(SFT_RECORDS[0]),
        "",
        json.dumps(SFT_RECORDS[1]),
        "   ",
        *map(json.dumps, SFT_RECORDS[2:]),
    ]
    write_lines(path, lines)
    result = read_records(path)
    check_sft_records(result, str(path))
    assert [record["_where"] for record in result.records] == [f"{path}:{line}" for line in (1, 3, 5, 6)]


def test_jsonl_with_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SFT_RECORDS[0]).encode() + b"\r\n")
    assert read_records(path).records[0]["completion"] == "hi"


def test_json_list_and_data_object(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(SFT_RECORDS))
    check_sft_records(read_records(listed), str(listed))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": SFT_RECORDS}))
    result = read_records(wrapped)
    check_sft_records(result, str(wrapped))
    assert result.records[3]["_where"] == f"{wrapped}:[3]"


def test_parquet(tmp_path):
    import pyarrow
    import pyarrow.parquet

    rows = [{"question": f"q{i}", "answer": f"a\n#### {i}", "level": i} for i in range(3)]
    path = tmp_path / "data.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    result = read_records(path)
    assert [record["reference"] for record in result.records] == ["0", "1", "2"]
    assert [record["level"] for record in result.records] == [0, 1, 2]
    assert result.records[2]["_where"] == f"{path}:[2]"


def test_datasets_directory_with_splits(tmp_path):
    import datasets

    train = datasets.Dataset.from_list([{"prompt": "p", "completion": "c"}] * 2)
    test = datasets.Dataset.from_list([{"prompt": "t", "completion": "u"}])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dd"))
    train.save_to_disk(str(tmp_path / "single"))

    assert len(read_records(tmp_path / "dd")) == 2
    picked = read_records(tmp_path / "dd", split="test")
    assert picked.records[0]["prompt"] == "t" and "[test]" in picked.records[0]["_where"]
    assert len(read_records(tmp_path / "single", split="anything")) == 2
    raises_at(
        lambda: read_records(tmp_path / "dd", split="validation"), "no split 'validation'", "train", "test"
    )


def test_directory_that_is_not_a_dataset(tmp_path):
    raises_at(lambda: read_records(tmp_path), str(tmp_path), "not a saved datasets directory")


def test_missing_file_and_unsupported_suffix(tmp_path):
    raises_at(lambda: read_records(tmp_path / "nope.jsonl"), "nope.jsonl", "file not found")
    (tmp_path / "data.csv").write_text("a,b\n")
    raises_at(lambda: read_records(tmp_path / "data.csv"), "data.csv", "unsupported file type '.csv'")


def test_hub_name_without_network_is_a_data_error(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    error = raises_at(
        lambda: read_records("someone/not-here:main"), "someone/not-here:main", "hub could not provide it"
    )
    assert "save_to_disk" in error.fix


def test_unknown_kind_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown record kind 'rl'"):
        read_records(tmp_path / "x.jsonl", kind="rl")


def test_write_jsonl_round_trip(tmp_path):
    records = [{"prompt": "é ✓", "completion": "ok", "n": 1}]
    path = write_jsonl(records, tmp_path / "sub" / "out.jsonl")
    assert path.read_bytes() == '{"prompt": "é ✓", "completion": "ok", "n": 1}\n'.encode()
    assert read_records(path).records[0]["prompt"] == "é ✓"
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]


# ------------------------------------------------------------------------------------------- other kinds


def test_preference_records():
    records = [
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {
            "prompt": CHAT_PROMPT,
            "chosen": CHAT_COMPLETION,
            "rejected": [{"role": "assistant", "content": "5"}],
        },
        # implicit prompt: both conversations start with the same user turn (as in UltraFeedback)
        {
            "prompt": "2+2?",
            "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
            "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
        },
        {"prompt": "2+2?", "chosen": CHAT_COMPLETION, "rejected": [{"role": "assistant", "content": "5"}]},
    ]
    plain, chat, implicit, string_prompt = validate_records(records, kind="preference").records
    assert (plain["prompt"], plain["chosen"], plain["rejected"]) == ("Q", "good", "bad")
    assert chat["prompt"] == CHAT_PROMPT and chat["rejected"][0]["content"] == "5"
    assert implicit["prompt"] == [{"role": "user", "content": "2+2?"}]
    assert implicit["chosen"] == CHAT_COMPLETION
    assert string_prompt["prompt"] == [{"role": "user", "content": "2+2?"}]


def test_preference_errors():
    raises_at(
        lambda: validate_records([{"prompt": "Q", "chosen": "a"}], kind="preference", source="p.jsonl"),
        "p.jsonl:[0]:rejected",
        "missing field 'rejected'",
    )
    raises_at(
        lambda: validate_records(
            [{"prompt": "Q", "chosen": "a", "rejected": CHAT_COMPLETION}], kind="preference"
        ),
        ":rejected",
        "same form",
    )
    raises_at(
        lambda: validate_records([{"prompt": "Q", "chosen": "a", "rejected": " "}], kind="preference"),
        ":rejected",
        "empty completion",
    )


def test_prompt_records_and_references():
    records = [
        {"prompt": "What is 2+3?", "answer": 5},
        {"question": "How many?", "answer": "Count them.\n#### 12"},
        {"prompt": CHAT_PROMPT, "final_answer": "4"},
        {"messages": [*CHAT_PROMPT, *CHAT_COMPLETION], "reference": 4.0},
        {"question": "Name it.", "answer": "  Paris "},
    ]
    result = validate_records(records, kind="prompt")
    assert [record.get("reference") for record in result.records] == ["5", "12", "4", "4", "Paris"]
    assert result.records[1]["prompt"] == [{"role": "user", "content": "How many?"}]
    assert result.records[3]["prompt"] == CHAT_PROMPT  # the final assistant turn is not part of the prompt


def test_reference_from_solution():
    assert reference_from_solution("a #### b\n#### 1,234 ") == "1234"
    assert reference_from_solution("no marker") is None
    assert reference_from_solution("#### ") is None


# ---------------------------------------------------------------------------------------- error messages


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('{"prompt": "p", "completion": ', None, "malformed JSON"),
        ("[1, 2]", None, "must be a JSON object"),
        ('{"prompt": "p"}', "completion", "missing field 'completion'"),
        (
            '{"prompt": 3, "completion": "c"}',
            "prompt",
            "wrong type: expected a string or a list of messages, got a number",
        ),
        ('{"prompt": "p", "completion": "  "}', "completion", "empty completion"),
        (
            '{"prompt": [{"role": "user", "content": "p"}], "completion": "c"}',
            "completion",
            "prompt is a list but completion is a string",
        ),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role", "unknown role 'robot'"),
        ('{"messages": [{"role": "user"}]}', "messages[0].content", "missing field 'messages[0].content'"),
        ('{"messages": [{"role": "user", "content": 1}]}', "messages[0].content", "wrong type"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "messages", "no assistant message"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}',
            "messages[1].content",
            "empty completion",
        ),
        ('{"messages": "hello"}', "messages", "wrong type"),
        ('{"question": "q"}', "answer", "missing field 'answer'"),
        ('{"text": "q"}', "messages", "missing field: the record has none of"),
        ('{"prompt": "p", "completion": "c", "reference": [1]}', "reference", "wrong type"),
        ('{"prompt": "p", "completion": "\\ud800"}', "completion", "not valid Unicode"),
    ],
)
def test_invalid_line_names_file_line_and_field(tmp_path, line, field, message):
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "ok", "completion": "fine"}', "", line])
    where = f"{path}:3" + (f":{field}" if field else "")
    error = raises_at(lambda: read_records(path), where, message, "How to fix:")
    assert error.fix


def test_non_utf8_byte_names_its_line(tmp_path):
    path = write_lines(
        tmp_path / "latin1.jsonl",
        [
            '{"prompt": "a", "completion": "b"}',
            b'{"prompt": "caf' + b"\xe9" + b'", "completion": "x"}',
        ],
    )
    raises_at(lambda: read_records(path), f"{path}:2", "not valid UTF-8", "0xe9")


def test_json_file_errors_name_their_line(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": \n]')
    raises_at(lambda: read_records(broken), f"{broken}:4", "malformed JSON")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'[\n{"prompt": "a",\n "completion": "\xff"}]')
    raises_at(lambda: read_records(latin), f"{latin}:3", "not valid UTF-8")
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    raises_at(lambda: read_records(scalar), str(scalar), "must hold a list of records")
    bad_item = tmp_path / "items.json"
    bad_item.write_text(json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": 1}]))
    raises_at(lambda: read_records(bad_item), f"{bad_item}:[1]:completion", "wrong type")


def test_broken_parquet_is_a_data_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    raises_at(lambda: read_records(path), str(path), "cannot read Parquet file")


# ---------------------------------------------------------------------------------------------- skipping


def test_skip_invalid_counts_and_describes_every_skipped_record(tmp_path):
    lines = [
        '{"prompt": "a", "completion": "b"}',
        "{oops",
        '{"prompt": "a"}',
        b"\xff\xfe",
        '{"prompt": "a", "completion": "b", "x": 1}',
        '{"messages": [{"role": "alien", "content": "x"}]}',
    ]
    path = write_lines(tmp_path / "mixed.jsonl", lines)
    result = read_records(path, skip_invalid=True)
    assert len(result) == 2 and result.skipped == 4
    assert [record["_where"] for record in result.records] == [f"{path}:1", f"{path}:5"]
    assert len(result.problems) == 4
    assert result.problems[0].startswith(f"{path}:2: malformed JSON")
    assert result.problems[1].startswith(f"{path}:3:completion: missing field")
    assert result.problems[2].startswith(f"{path}:4: line is not valid UTF-8")
    assert result.problems[3].startswith(f"{path}:6:messages[0].role: unknown role")
    assert all("\n" not in problem for problem in result.problems)
    with pytest.raises(DataError):
        read_records(path)


# ------------------------------------------------------------------------------------------------- fuzzing

FUZZ = settings(
    max_examples=int(os.environ.get("POSTTRAIN_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "prompt",
        "completion",
        "messages",
        "question",
        "answer",
        "chosen",
        "rejected",
        "reference",
        "role",
        "content",
    ]
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "tool", "x"]) | json_values,
            "content": st.text(max_size=8) | json_values,
        },
    ),
    max_size=3,
)
record_like = st.dictionaries(field_names, json_values | messages | st.text(max_size=8), max_size=5)


def check_record_set(read, count_lines: int | None = None) -> None:
    """Either a DataError, or a RecordSet in which nothing went missing without being counted."""
    for skip_invalid in (False, True):
        try:
            result = read(skip_invalid)
        except DataError:
            assert not skip_invalid or count_lines is None  # line-based files never fail as a whole
            continue
        assert len(result.problems) == result.skipped
        if count_lines is not None and skip_invalid:
            assert len(result.records) + result.skipped == count_lines
        for record in result.records:
            assert isinstance(record, dict) and isinstance(record["_where"], str)


@FUZZ
@given(data=st.binary(max_size=300), kind=st.sampled_from(["sft", "preference", "prompt"]))
def test_fuzz_random_bytes(tmp_path, data, kind):
    for suffix in (".jsonl", ".json", ".parquet"):
        path = tmp_path / f"fuzz{suffix}"
        path.write_bytes(data)
        lines = sum(1 for line in data.split(b"\n") if line.strip()) if suffix == ".jsonl" else None
        check_record_set(lambda skip, path=path: read_records(path, kind=kind, skip_invalid=skip), lines)


@FUZZ
@given(
    records=st.lists(record_like | json_values, max_size=6),
    kind=st.sampled_from(["sft", "preference", "prompt"]),
)
def test_fuzz_json_values(tmp_path, records, kind):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    lines = sum(1 for record in records)
    check_record_set(lambda skip: read_records(path, kind=kind, skip_invalid=skip), lines)
    check_record_set(lambda skip: validate_records(records, kind=kind, skip_invalid=skip), len(records))
