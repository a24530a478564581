"""LaSeR self-reward evaluation: reserved token choice, log p(z_c) from one forward, metrics, CLI."""

import json
import math
import random

import pytest
import torch

from posttrain.errors import DataError, ModelError
from posttrain.evals.selfreward import (
    SelfRewardOptions,
    auroc,
    completion_scores,
    evaluate_selfreward,
    measure_reserved_token,
    reserved_logprobs,
    reserved_token,
    selfreward_metrics,
)
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.ops import laser_score
from tests.helpers import read_jsonl, run_cli

EOS = 2  # <|im_end|> of the tiny tokenizer
RESERVED = 0  # <|endoftext|>, the tiny tokenizer's default reserved token


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ------------------------------------------------------------------------------------------ reserved token


def test_default_reserved_token_skips_bos_eos_pad_and_chat_template_tokens():
    tokenizer = tiny_tokenizer()
    assert reserved_token(tokenizer) == RESERVED  # only the unknown token is left: the last resort
    tokenizer.add_tokens(["<repo_name>", "<empty_output>", "<tool_call>"], special_tokens=True)
    assert tokenizer.convert_ids_to_tokens(reserved_token(tokenizer)) == "<tool_call>"  # highest id
    tokenizer.chat_template += "{{ '<tool_call>' }}"
    assert tokenizer.convert_ids_to_tokens(reserved_token(tokenizer)) == "<empty_output>"
    tokenizer.add_tokens(["<|vision_start|>", "<later>"], special_tokens=True)
    # LaSeR's Qwen choice wins over the highest id
    assert tokenizer.convert_ids_to_tokens(reserved_token(tokenizer)) == "<|vision_start|>"


def test_configured_reserved_token_is_looked_up_and_checked():
    tokenizer = tiny_tokenizer()
    assert reserved_token(tokenizer, "<|endoftext|>") == 0
    with pytest.raises(ModelError, match="'<z_c>' is not in the tokenizer's vocabulary") as missing:
        reserved_token(tokenizer, "<z_c>")
    assert missing.value.fix and "<|endoftext|>" in missing.value.fix
    with pytest.raises(ModelError, match="BOS, EOS or PAD"):
        reserved_token(tokenizer, "<|im_end|>")


# ----------------------------------------------------------------------------------- one forward pass


def manual_scores(model, prompt, completion, reserved_id):
    """Full logits of prompt + completion (+ EOS) + z_c, one sequence at a time."""
    ended = completion if completion and completion[-1] == EOS else [*completion, EOS]
    sequence = torch.tensor([[*prompt, *ended, reserved_id]])
    with torch.no_grad():
        logp = torch.log_softmax(model(sequence).logits[0].double(), -1)
    reserved = logp[len(prompt) + len(ended) - 1, reserved_id]
    positions = logp[len(prompt) - 1 : len(prompt) - 1 + len(completion)]
    certainty = (-positions.mean(-1) - math.log(logp.shape[-1])).mean() if completion else torch.tensor(0.0)
    return reserved.item(), certainty.item()


def random_pairs(count, seed=0):
    rng = random.Random(seed)
    prompts = [[rng.randrange(4, 260) for _ in range(rng.randrange(1, 9))] for _ in range(count)]
    completions = [[rng.randrange(4, 260) for _ in range(rng.randrange(0, 7))] for _ in range(count)]
    completions[1] = [*completions[1], EOS]  # already ends with EOS: nothing is appended
    completions[2] = []  # only the appended EOS; self-certainty over no positions is 0
    return prompts, completions


def test_reserved_logprobs_and_self_certainty_equal_full_logits(model):
    prompts, completions = random_pairs(5)
    expected = torch.tensor(
        [manual_scores(model, p, c, RESERVED) for p, c in zip(prompts, completions, strict=True)],
        dtype=torch.float64,
    )
    got = completion_scores(
        model, prompts, completions, EOS, RESERVED, with_self_certainty=True, batch_size=2
    )
    torch.testing.assert_close(got.reserved_logprobs.double(), expected[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.self_certainty.double(), expected[:, 1], atol=1e-5, rtol=0)
    alone = reserved_logprobs(model, prompts, completions, EOS, RESERVED, batch_size=8)
    torch.testing.assert_close(alone, got.reserved_logprobs, atol=1e-5, rtol=0)


def test_scoring_input_errors(model):
    with pytest.raises(DataError, match="2 prompts and 1 completions"):
        completion_scores(model, [[5], [6]], [[7]], EOS, RESERVED)
    with pytest.raises(DataError, match="a prompt has no tokens"):
        completion_scores(model, [[]], [[7]], EOS, RESERVED)


def test_scoring_restores_training_mode_and_keeps_no_graph(model):
    model.train()
    prompts, completions = random_pairs(3, seed=1)
    scores = completion_scores(model, prompts, completions, EOS, RESERVED)
    assert model.training and not scores.reserved_logprobs.requires_grad and scores.self_certainty is None
    model.eval()


# --------------------------------------------------------------------------------------------- metrics


def test_selfreward_metrics_hand_case():
    scores = [0.9, 0.6, 0.2, 0.7, 0.1]
    correct = [True, True, True, False, False]
    metrics = selfreward_metrics(scores, correct)
    assert metrics["accuracy_on_correct"] == pytest.approx(2 / 3)
    assert metrics["accuracy_on_incorrect"] == pytest.approx(1 / 2)
    assert metrics["f1"] == pytest.approx(4 / 7)  # 2·(2/3)·(1/2) / (2/3 + 1/2)
    assert metrics["auroc"] == pytest.approx(4 / 6)  # 4 of the 6 (correct, incorrect) pairs ordered right
    assert (metrics["num_correct"], metrics["num_incorrect"]) == (3, 2)


def test_threshold_is_strict_and_empty_classes_give_none():
    assert selfreward_metrics([0.5, 0.5], [True, False])["accuracy_on_correct"] == 0.0
    only_correct = selfreward_metrics([0.9, 0.1], [True, True])
    assert only_correct["accuracy_on_correct"] == 0.5
    assert only_correct["accuracy_on_incorrect"] is None and only_correct["f1"] is None
    assert only_correct["auroc"] is None
    assert selfreward_metrics([0.0, 1.0], [True, False])["f1"] == 0.0
    with pytest.raises(DataError, match="2 scores but 1 verdicts"):
        selfreward_metrics([0.1, 0.2], [True])


def test_auroc_counts_ties_half_and_equals_pair_counting():
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.3, 0.7, 0.7], [False, True, False]) == pytest.approx(0.75)
    rng = random.Random(3)
    for _ in range(20):
        scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(12)]
        labels = [rng.random() < 0.5 for _ in range(12)]
        positives = [s for s, y in zip(scores, labels, strict=True) if y]
        negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
        if not positives or not negatives:
            continue
        pairs = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
        assert auroc(scores, labels) == pytest.approx(pairs / (len(positives) * len(negatives)))


# ------------------------------------------------------------------------------------------ evaluation


def scored_records():
    return [
        {"prompt": [{"role": "user", "content": "2+2?"}], "reference": "4", "completion": "2+2 = 4\n#### 4"},
        {"prompt": [{"role": "user", "content": "3+4?"}], "reference": "7", "completion": "#### 8"},
        {"prompt": "1+1=", "reference": "2", "completion": [{"role": "assistant", "content": "#### 2"}]},
    ]


def test_measure_reserved_token_reports_mean_and_std(model):
    tokenizer = tiny_tokenizer()
    measured = measure_reserved_token(model, tokenizer, scored_records())
    evaluated = evaluate_selfreward(model, tokenizer, scored_records())
    assert measured["reserved_token"] == "<|endoftext|>" and measured["count"] == 3
    assert measured["mean"] == pytest.approx(evaluated["reserved_logprob_mean"], abs=1e-6)
    assert measured["std"] == pytest.approx(evaluated["reserved_logprob_std"], abs=1e-6)
    assert measured["std"] > 0


def test_evaluate_given_completions(model, tmp_path):
    result = evaluate_selfreward(
        model, tiny_tokenizer(), scored_records(), SelfRewardOptions(c_ref=-5.0, beta_v=0.2, out_dir=tmp_path)
    )
    assert result["completions"] == "given" and result["num_completions"] == 3
    assert result["verifier_accuracy"] == pytest.approx(2 / 3)
    rows = read_jsonl(tmp_path / "samples.jsonl")
    assert [row["correct"] for row in rows] == [True, False, True]
    assert [row["extracted"] for row in rows] == ["4", "8", "2"]
    for row in rows:
        assert row["laser_score"] == pytest.approx(laser_score(row["reserved_logprob"], -5.0, 0.2), abs=1e-6)
    expected = selfreward_metrics([row["laser_score"] for row in rows], [True, False, True])
    assert {key: result[key] for key in expected} == pytest.approx(expected)


def test_records_missing_some_completions_are_a_data_error(model):
    records = scored_records()
    del records[2]["completion"]
    records[2]["_where"] = "data.jsonl:3"
    with pytest.raises(DataError, match="data.jsonl:3:completion"):
        evaluate_selfreward(model, tiny_tokenizer(), records)


def test_cli_selfreward_given_and_sampled(tmp_path):
    data = tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in scored_records()))
    given = run_cli("eval", "selfreward", "--model", "tiny-random", "--data", str(data), "--json")
    assert given.returncode == 0, given.stderr
    result = json.loads(given.stdout.strip().splitlines()[-1])
    assert result["completions"] == "given" and result["num_completions"] == 3
    assert result["reserved_token"] == "<|endoftext|>" and result["verifier_accuracy"] == pytest.approx(2 / 3)

    options = "--model tiny-random --data task:arithmetic --n 3 --samples 2 --max-new-tokens 6"
    sampled = run_cli("eval", "selfreward", *options.split(), "--out", str(tmp_path / "ev"))
    assert sampled.returncode == 0, sampled.stderr
    assert "num_completions: 6" in sampled.stdout and "auroc" in sampled.stdout
    assert len(read_jsonl(tmp_path / "ev" / "samples.jsonl")) == 6

    missing = run_cli(
        "eval", "selfreward", "--model", "tiny-random", "--data", str(data), "--reserved-token=<z_c>"
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "'<z_c>' is not in the tokenizer's vocabulary" in missing.stderr
