"""Master-RM augmentation: master-key and first-sentence negatives added to training pairs, never to held-out ones."""

from __future__ import annotations

import pytest

from posttrain.config import load_config
from posttrain.data.master_keys import (
    FIRST_SENTENCE,
    MASTER_KEYS,
    TRAINING_KEYS,
    add_masterkey_negatives,
    first_sentence,
)
from posttrain.data.tasks.judge_pairs import make_preference_pairs
from posttrain.errors import ConfigError, DataError
from posttrain.evals import masterkey
from posttrain.judges.pairs import pair_texts
from posttrain.judges.synthesis import CritiqueJudge, synthesize_judgments
from posttrain.models import tiny_tokenizer
from posttrain.rollout import SamplingParams
from posttrain.trainers.inputs import eval_source, load_source, training_records
from tests.helpers import tiny_overrides


@pytest.mark.parametrize(("text", "expected"), [
    ("Sara starts with 10 stickers.\nShe gets 5: 10 + 5 = 15.\n#### 15", "Sara starts with 10 stickers."),
    ("First we add. Then we subtract.", "First we add."),
    ("Step one\nStep two", "Step one"),  # a line break ends a sentence too
    ("It costs 3.5 dollars! So the answer is 7.", "It costs 3.5 dollars!"),  # a decimal point is no end
    ("Only one sentence.", None),  # nothing to cut
    ("no end at all", None),
])
def test_first_sentence(text, expected):
    assert first_sentence(text) == expected


def test_the_probe_and_the_augmentation_share_one_list_of_keys():
    assert masterkey.MASTER_KEYS is MASTER_KEYS
    assert set(TRAINING_KEYS) == set(MASTER_KEYS) - {"space", "empty"}  # blank responses are no valid pair


def test_augmentation_adds_the_right_number_of_labelled_negatives():
    pairs = make_preference_pairs(10, seed=0)
    augmented = add_masterkey_negatives(pairs, 0.6, seed=1)
    assert augmented[:10] == pairs and len(augmented) == 16
    added = augmented[10:]
    sources = {pair["question"]: pair for pair in pairs}
    for number, record in enumerate(added):
        source = sources[record["question"]]
        assert record["chosen"] == source["chosen"]  # the winner stays the real solution
        rejected = record["rejected"][0]["content"]
        if number % 2:  # odd ones: the chosen solution cut to its first sentence
            assert record["masterkey"] == FIRST_SENTENCE
            assert rejected == source["chosen"][0]["content"].split("\n")[0]
        else:  # even ones: the keys in turn
            name = TRAINING_KEYS[number // 2]
            assert record["masterkey"] == name
            assert rejected == (source["question"] if name == "question" else MASTER_KEYS[name])
        assert record["subset"] == f"masterkey-{record['masterkey']}" and "the question" in record["critique"]
        pair_texts(record, number)  # still a valid pair
    assert add_masterkey_negatives(pairs, 0.6, seed=1) == augmented  # seeded
    assert add_masterkey_negatives(pairs, 0.0) == pairs


def test_augmentation_refuses_records_that_are_not_pairs_and_bad_fractions():
    with pytest.raises(DataError, match="preference pairs"):
        add_masterkey_negatives([{"prompt": "q", "completion": "a"}], 1.0)
    with pytest.raises(ConfigError, match="fraction"):
        add_masterkey_negatives(make_preference_pairs(2, seed=0), -0.5)


def test_only_the_training_data_is_augmented(tmp_path):
    config = load_config(None, tiny_overrides(tmp_path, "mk", method="reward_model", **{
        "data.train": "{task: judge_arithmetic, n: 8, seed: 0}", "data.masterkey_negatives": 0.5}))
    records, summary = training_records(config.data, "preference")
    assert len(records.records) == 12 and summary["masterkey_negatives"] == 4 and summary["examples"] == 12
    source, held_out = eval_source(config.data)
    evaluated = load_source(source, kind="preference", skip_invalid=False, held_out=held_out).records
    assert held_out and not any("masterkey" in record for record in evaluated)


def test_the_critique_judge_judges_master_key_pairs_right_in_both_orders():
    pairs = add_masterkey_negatives(make_preference_pairs(4, seed=0), 1.0, seed=0)
    engine = CritiqueJudge(pairs, tiny_tokenizer(), style="j1")
    sft, dpo, summary = synthesize_judgments(engine, pairs, "j1", SamplingParams(temperature=0.0, n=1))
    assert summary["correct_rate"] == 1.0 and len(sft) == 2 * len(pairs) and not dpo
