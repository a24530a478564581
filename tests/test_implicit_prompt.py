"""Implicit-prompt preference records (only ``chosen`` and ``rejected``) and unpaired records (``label``):
the reader, agreement with TRL 1.16's ``extract_prompt`` where both cut at the same place, and bad input."""

import json

import pytest

from posttrain.data import read_records, validate_records
from posttrain.errors import DataError

SKY = "\n\nHuman: What color is the sky?\n\nAssistant:"
HH = [  # Anthropic HH transcripts: one and two turns; the two-turn answers differ after a shared word
    {"chosen": f"{SKY} It is blue.", "rejected": f"{SKY} Green, I think."},
    {"chosen": f"{SKY} Blue.\n\nHuman: Why?\n\nAssistant: Light scatters.",
     "rejected": f"{SKY} Blue.\n\nHuman: Why?\n\nAssistant: Light bounces."},
]
MESSAGES = {
    "chosen": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "4"}],
    "rejected": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                 {"role": "assistant", "content": "5"}],
}
TEXT = {"chosen": "Question: 2+2? Answer: 4", "rejected": "Question: 2+2? Answer: 42"}


def write(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def trl_extract(record):
    from trl.data_utils import extract_prompt

    return extract_prompt({"chosen": record["chosen"], "rejected": record["rejected"]})


def test_implicit_prompts_of_transcripts_messages_and_text(tmp_path):
    records = read_records(write(tmp_path, [*HH, MESSAGES, TEXT]), kind="preference").records
    one_turn, two_turns, messages, text = records
    assert (one_turn["prompt"], one_turn["chosen"], one_turn["rejected"]) == (SKY, " It is blue.",
                                                                              " Green, I think.")
    # cut after the last shared "\n\nAssistant:", not inside the shared words of the answers
    assert two_turns["prompt"] == f"{SKY} Blue.\n\nHuman: Why?\n\nAssistant:"
    assert (two_turns["chosen"], two_turns["rejected"]) == (" Light scatters.", " Light bounces.")
    assert messages["prompt"] == MESSAGES["chosen"][:2]
    assert messages["chosen"] == [{"role": "assistant", "content": "4"}]
    assert messages["rejected"] == [{"role": "assistant", "content": "5"}]
    # plain text: before the last shared whitespace, so "4" / "42" stay whole words
    assert (text["prompt"], text["chosen"], text["rejected"]) == ("Question: 2+2? Answer:", " 4", " 42")
    assert [record["_where"] for record in records] == [f"{tmp_path / 'pairs.jsonl'}:{n}" for n in range(1, 5)]


def test_implicit_prompts_agree_with_trl_extract_prompt_where_the_answers_differ_at_a_turn():
    # the completions differ from their first word (text) or from their first message (conversations)
    agreeing = [HH[0], MESSAGES, {"chosen": "Say hi. Hello!", "rejected": "Say hi. Go away."},
                {"chosen": MESSAGES["chosen"] + [{"role": "user", "content": "Sure?"},
                                                 {"role": "assistant", "content": "Yes."}],
                 "rejected": MESSAGES["chosen"] + [{"role": "user", "content": "Sure?"},
                                                   {"role": "assistant", "content": "No."}]}]
    for ours, raw in zip(validate_records(agreeing, kind="preference").records, agreeing, strict=True):
        assert {key: ours[key] for key in ("prompt", "chosen", "rejected")} == trl_extract(raw)
    # where TRL cuts inside the answers' shared words, the cut here stays at the turn boundary
    trl = trl_extract(HH[1])
    assert trl["chosen"] == " scatters." and trl["prompt"].endswith("Assistant: Light")
    ours = validate_records([HH[1]], kind="preference").records[0]
    assert ours["chosen"] == " Light scatters." and ours["prompt"] + ours["chosen"] == HH[1]["chosen"]


def test_a_conversation_that_begins_the_other_keeps_a_message_on_each_side():
    chosen = MESSAGES["chosen"]
    longer = [*chosen, {"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}]
    record = validate_records([{"chosen": chosen, "rejected": longer}], kind="preference").records[0]
    assert record["prompt"] == chosen[:2] and record["chosen"] == chosen[2:] and record["rejected"] == longer[2:]


@pytest.mark.parametrize("row,message", [
    ({"chosen": "Blue.", "rejected": "Green."}, "share no beginning"),  # nothing shared
    ({"chosen": "Bluest", "rejected": "Blue!"}, "share no beginning"),  # shared, but inside one word
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]},
     "share no leading messages"),
])
def test_records_without_a_shared_prompt_are_data_errors_naming_file_and_record(tmp_path, row, message):
    path = write(tmp_path, [HH[0], row])
    with pytest.raises(DataError, match=message) as error:
        read_records(path, kind="preference")
    assert error.value.where == f"{path}:2:prompt" and "add 'prompt'" in error.value.fix
    with pytest.raises(DataError) as error:
        validate_records([HH[0], HH[1], row], kind="preference", source="hh.json")
    assert error.value.where == "hh.json:[2]:prompt"


def test_an_implicit_prompt_with_nothing_after_it_is_an_empty_completion():
    with pytest.raises(DataError, match="empty completion") as error:
        validate_records([{"chosen": f"{SKY} Blue.", "rejected": SKY}], kind="preference")
    assert error.value.where.endswith(":rejected")


def test_unpaired_records_and_their_errors(tmp_path):
    rows = [{"prompt": "Q", "completion": "A", "label": True},
            {"prompt": MESSAGES["chosen"][:2], "completion": MESSAGES["chosen"][2:], "label": False}]
    text, chat = read_records(write(tmp_path, rows), kind="unpaired").records
    assert (text["prompt"], text["completion"], text["label"]) == ("Q", "A", True)
    assert chat["completion"] == MESSAGES["chosen"][2:] and chat["label"] is False
    for row, field, message in [({"prompt": "Q", "completion": "A", "label": 1}, "label", "true (a desirable"),
                                ({"prompt": "Q", "completion": "A"}, "label", "missing field 'label'"),
                                ({"prompt": "Q", "completion": " ", "label": True}, "completion", "empty"),
                                ({"prompt": "Q", "chosen": "A", "rejected": "B", "label": True}, "chosen",
                                 "two records")]:
        with pytest.raises(DataError) as error:
            validate_records([row], kind="unpaired", source="u.jsonl")
        assert error.value.where == f"u.jsonl:[0]:{field}"
        assert message in f"{error.value.what} {error.value.fix}"
