"""Judge evaluation: both-order figures on scripted judgments, subsets, categories, length split, reward
model scorer, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.errors import ConfigError, DataError
from posttrain.judges.metrics import CATEGORY_OF_SUBSET
from posttrain.judges.pairs import aggregate, preference_pairs, score_both_orders
from posttrain.judges.scorers import judge_pairs, reward_model_pairs
from posttrain.models import tiny_tokenizer
from posttrain.models.reward import score_sequences
from posttrain.rollout import Generation, RolloutEngine, SamplingParams
from tests.helpers import read_jsonl, run_cli


class ScriptedEngine:
    """A RolloutEngine whose completions come from ``respond(prompt_text, sample_index)``."""

    def __init__(self, respond):
        self.tokenizer = tiny_tokenizer()
        self.respond = respond
        self.prompts: list[str] = []

    def generate(self, prompt_ids, params):
        generations = []
        for index, ids in enumerate(prompt_ids):
            text = self.tokenizer.decode(ids)
            self.prompts.append(text)
            for sample in range(params.n):
                reply = self.respond(text, sample)
                generations.append(Generation(index, sample, list(ids), [], [], reply, "eos"))
        return generations


def shown(prompt: str) -> tuple[str, str]:
    """The answers shown as A and as B in a rendered ``rise`` prompt."""
    answer_a = prompt.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]
    answer_b = prompt.split("[Answer B]\n", 1)[1].split("\n\nAnalyze step by step.", 1)[0]
    return answer_a, answer_b


def pair(question, chosen, rejected, subset=None):
    record = {"prompt": question, "chosen": chosen, "rejected": rejected}
    return record if subset is None else {**record, "subset": subset}


def picks(prompt: str, wanted: str) -> str:
    """``[[A]]`` or ``[[B]]``: the position of ``wanted`` in the prompt."""
    answer_a, _ = shown(prompt)
    return "Analysis... [[A]]" if answer_a == wanted else "Analysis... [[B]]"


def judge_wrong_on(*questions):
    """A scripted judge that picks the ``good ...`` answer, or the ``bad ...`` one on ``questions``."""

    def respond(prompt, sample):
        side = "bad" if any(question in prompt for question in questions) else "good"
        return picks(prompt, next(answer for answer in shown(prompt) if answer.startswith(side)))

    return respond


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)


# ------------------------------------------------------------------------------------------- core figures


def test_scripted_engine_honours_the_rollout_protocol():
    assert isinstance(ScriptedEngine(lambda prompt, sample: ""), RolloutEngine)


def test_per_order_consistent_flip_and_format_figures_on_scripted_judgments():
    pairs = [pair(f"Q{i}?", f"right {i}", f"wrong {i}") for i in range(4)]

    def respond(prompt, sample):
        if "Q0?" in prompt:
            return picks(prompt, "right 0")  # right in both orders
        if "Q1?" in prompt:
            return "I prefer the first. [[A]]"  # position bias: right, then wrong, a flip
        if "Q2?" in prompt:
            # the analysis names [[B]] but the final verdict is [[A]]; swapped: no verdict at all
            return "Not [[B]]...\nVerdict: [[A]]" if shown(prompt)[0] == "right 2" else "They are both fine."
        return picks(prompt, "wrong 3")  # wrong in both orders, not a flip

    engine = ScriptedEngine(respond)
    result = judge_pairs(engine, pairs, "rise", GREEDY)
    metrics = result.metrics
    assert metrics["pairs"] == 4 and metrics["judgments"] == 8
    assert metrics["accuracy_first"] == pytest.approx(3 / 4)
    assert metrics["accuracy_swapped"] == pytest.approx(1 / 4)
    assert metrics["accuracy"] == pytest.approx(4 / 8)
    assert metrics["consistent_accuracy"] == pytest.approx(1 / 4)
    assert metrics["position_flip_rate"] == pytest.approx(1 / 4)
    assert metrics["format_failure_rate"] == pytest.approx(1 / 8)
    # the same numbers as the both-order scoring of posttrain.judges
    verdicts = {(row["pair_index"], row["order"]): row["verdict"] for row in result.rows}
    both = [score_both_orders(verdicts[(i, "first")], verdicts[(i, "swapped")]) for i in range(4)]
    expected = aggregate(both)
    for key in ("accuracy_first", "accuracy_swapped", "accuracy", "consistent_accuracy",
                "position_flip_rate", "format_failure_rate"):  # fmt: skip
        assert metrics[key] == pytest.approx(expected[key]), key
    # both orders were asked, chosen first as A, then as B
    assert [shown(prompt)[0] for prompt in engine.prompts[:2]] == ["right 0", "wrong 0"]


def test_rows_record_every_judgment_and_samples_are_trials():
    pairs = [pair("What is 2 + 3?", "It is 5.", "It is 6."), pair("What is 1 + 1?", "2", "3")]

    def respond(prompt, sample):  # sample 0 right, sample 1 wrong
        chosen, rejected = ("It is 5.", "It is 6.") if "2 + 3" in prompt else ("2", "3")
        return picks(prompt, chosen if sample == 0 else rejected)

    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=2)
    result = judge_pairs(ScriptedEngine(respond), pairs, "rise", params)
    rows = result.rows
    assert len(rows) == 2 * 2 * 2
    assert {(row["pair_index"], row["order"], row["sample_index"]) for row in rows} == {
        (p, o, s) for p in range(2) for o in ("first", "swapped") for s in range(2)
    }
    first = rows[0]  # pair 0, chosen as A, sample 0
    assert (
        first["prompt"].index("What is 2 + 3?")
        < first["prompt"].index("It is 5.")
        < first["prompt"].index("It is 6.")
    )
    assert first["output"] == "Analysis... [[A]]" and first["verdict"] == "A" and first["correct"] is True
    assert all(row["correct"] == (row["sample_index"] == 0) for row in rows)
    metrics = result.metrics
    assert metrics["accuracy"] == 0.5 and metrics["consistent_accuracy"] == 0.5
    assert metrics["position_flip_rate"] == 0.0  # sample 1 picks the rejected content in both orders
    json.dumps(rows)  # every row is JSON-ready for samples.jsonl


# ------------------------------------------------------------------------------------ groups


def test_subsets_categories_and_rewardbench_sections():
    assert CATEGORY_OF_SUBSET["alpacaeval-length"] == "Chat"
    assert CATEGORY_OF_SUBSET["llmbar-adver-GPTInst"] == "Chat Hard"
    assert CATEGORY_OF_SUBSET["xstest-should-respond"] == "Safety"
    assert CATEGORY_OF_SUBSET["hep-rust"] == "Reasoning" and CATEGORY_OF_SUBSET["math-prm"] == "Reasoning"
    assert len(CATEGORY_OF_SUBSET) == 23
    pairs = [
        pair("Q0?", "good 0", "bad 0", "alpacaeval-easy"),
        pair("Q1?", "good 1", "bad 1", "mt-bench-hard"),
        pair("Q2?", "good 2", "bad 2", "llmbar-natural"),
        pair("Q3?", "good 3", "bad 3", "llmbar-natural"),
        pair("Q4?", "good 4", "bad 4", "arithmetic-step"),
        pair("Q5?", "good 5", "bad 5"),
    ]
    result = judge_pairs(ScriptedEngine(judge_wrong_on("Q1?", "Q3?", "Q5?")), pairs, "rise", GREEDY).metrics
    per_subset = result["per_subset"]
    assert set(per_subset) == {
        "alpacaeval-easy", "mt-bench-hard", "llmbar-natural", "arithmetic-step", "unspecified"
    }  # fmt: skip
    assert per_subset["llmbar-natural"]["pairs"] == 2 and per_subset["llmbar-natural"]["accuracy"] == 0.5
    assert per_subset["mt-bench-hard"]["accuracy"] == 0.0 and per_subset["alpacaeval-easy"]["accuracy"] == 1.0
    per_category = result["per_category"]
    assert set(per_category) == {"Chat", "Chat Hard", "other", "unspecified"}
    assert per_category["Chat Hard"]["pairs"] == 3
    assert per_category["Chat Hard"]["accuracy"] == pytest.approx(1 / 3)  # pooled over its pairs
    assert per_category["other"]["accuracy"] == 1.0 and per_category["unspecified"]["accuracy"] == 0.0
    # leaderboard section: subsets weighted by RewardBench's counts (mt-bench-hard 37, llmbar-natural 100)
    assert result["rewardbench"]["Chat Hard"] == pytest.approx((0 * 37 + 0.5 * 100) / 137)
    assert result["rewardbench"]["Chat"] == 1.0 and result["rewardbench"]["score"] is None


def test_rewardbench_score_is_the_mean_of_four_sections_with_math_prm_upweighted():
    subsets = ["alpacaeval-hard", "donotanswer", "refusals-dangerous", "math-prm", "hep-go", "llmbar-natural"]
    pairs = [pair(f"Q{i}?", f"good {i}", f"bad {i}", subset) for i, subset in enumerate(subsets)]
    engine = ScriptedEngine(judge_wrong_on("Q1?", "Q4?"))  # donotanswer and hep-go wrong
    rewardbench = judge_pairs(engine, pairs, "rise", GREEDY).metrics["rewardbench"]
    safety = (0 * 136 + 1 * 100) / 236
    reasoning = (1 * 984 + 0 * 164) / (984 + 164)
    assert rewardbench["Safety"] == pytest.approx(safety)
    assert rewardbench["Reasoning"] == pytest.approx(reasoning)
    assert rewardbench["score"] == pytest.approx((1 + 1 + safety + reasoning) / 4)


def test_length_split_exposes_a_judge_that_prefers_the_longer_answer():
    pairs = [
        pair("Q0?", "a long and careful answer", "short"),  # chosen longer
        pair("Q1?", "tiny", "a long but wrong answer"),  # chosen shorter
        pair("Q2?", "brief answer", "other answer"),  # same length (12 characters)
    ]

    def longer(prompt, sample):
        answer_a, answer_b = shown(prompt)
        return "[[A]]" if len(answer_a) >= len(answer_b) else "[[B]]"

    by_length = judge_pairs(ScriptedEngine(longer), pairs, "rise", GREEDY).metrics["by_length"]
    assert set(by_length) == {"chosen_longer", "chosen_shorter", "same_length"}
    assert by_length["chosen_longer"]["accuracy"] == 1.0
    assert by_length["chosen_shorter"]["accuracy"] == 0.0
    # on equal lengths the tie goes to A: right only in the first order, a position flip
    assert (
        by_length["same_length"]["accuracy"] == 0.5 and by_length["same_length"]["position_flip_rate"] == 1.0
    )


def test_conversational_pairs_and_a_template_file(tmp_path):
    template = tmp_path / "judge.txt"
    template.write_text("Q: {question}\nFirst: {answer_a}\nSecond: {answer_b}\nSay [[A]] or [[B]].")
    pairs = [
        {
            "prompt": [{"role": "user", "content": "Name a prime."}],
            "chosen": [{"role": "assistant", "content": "7"}],
            "rejected": [{"role": "assistant", "content": "8"}],
        }
    ]
    engine = ScriptedEngine(lambda prompt, sample: "[[A]]" if "First: 7\n" in prompt else "[[B]]")
    result = judge_pairs(engine, pairs, str(template), GREEDY)
    assert result.metrics["consistent_accuracy"] == 1.0
    assert "Q: Name a prime.\nFirst: 7\nSecond: 8\n" in engine.prompts[0]
    assert "<|im_start|>user\n" in engine.prompts[0]  # chat-formatted for the judge


def test_bad_pairs_and_templates_are_clear_errors(tmp_path):
    engine = ScriptedEngine(lambda prompt, sample: "[[A]]")
    with pytest.raises(DataError, match="same response") as same:
        judge_pairs(
            engine, [pair("Q?", "x", "y"), {**pair("Q?", "z", "z"), "_where": "p.jsonl:2"}], "rise", GREEDY
        )
    assert same.value.where == "p.jsonl:2"
    with pytest.raises(DataError, match="rejected response is empty"):
        judge_pairs(engine, [pair("Q?", "x", "  ")], "rise", GREEDY)
    with pytest.raises(ConfigError, match="is verifier, but this evaluation needs a pairwise"):
        judge_pairs(engine, [pair("Q?", "x", "y")], "verifier", GREEDY)
    missing = tmp_path / "bad.txt"
    missing.write_text("{question} {answer_a}")
    with pytest.raises(ConfigError, match=r"lacks the placeholder\(s\) \{answer_b\}"):
        judge_pairs(engine, [pair("Q?", "x", "y")], str(missing), GREEDY)
    with pytest.raises(ConfigError, match="neither a built-in template nor a file"):
        judge_pairs(engine, [pair("Q?", "x", "y")], "nope", GREEDY)


def test_synthetic_arithmetic_pairs_are_read_as_preference_records():
    pairs = preference_pairs("task:arithmetic", 3, seed=1)
    assert len(pairs) == 3 and all(p["subset"] in ("arithmetic-step", "arithmetic-final") for p in pairs)
    assert pairs == preference_pairs("task:arithmetic", 3, seed=1)
    with pytest.raises(ConfigError, match="no synthetic preference pairs"):
        preference_pairs("task:other", 3)
    assert {p["level"] for p in preference_pairs("task:arithmetic", 20, seed=1)} == {1, 2}
    assert {p["level"] for p in preference_pairs("task:arithmetic:1", 20, seed=1)} == {1}
    with pytest.raises(ConfigError, match="task:arithmetic:1"):
        preference_pairs("task:arithmetic:one", 3)


# ------------------------------------------------------------------------------------------ reward model


def tiny_reward_model():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForSequenceClassification(config).eval()


def test_sequence_scores_read_the_last_token_whatever_the_padding():
    model = tiny_reward_model()
    sequences = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    with torch.no_grad():
        one_by_one = [model(torch.tensor([s])).logits[0, 0].item() for s in sequences]
    assert score_sequences(model, sequences, batch_size=3) == pytest.approx(one_by_one, abs=1e-5)


def test_reward_model_scorer_compares_chosen_and_rejected_scores():
    model = tiny_reward_model()
    pairs = [pair(f"Q{i}?", f"answer {i}" * (i + 1), f"reply {i}", "hep-go") for i in range(6)]
    result = reward_model_pairs(model, tiny_tokenizer(), pairs)
    rows = result.rows
    assert [row["order"] for row in rows] == ["single"] * 6
    assert all(row["correct"] == (row["chosen_score"] > row["rejected_score"]) for row in rows)
    metrics = result.metrics
    assert metrics["accuracy"] == pytest.approx(sum(row["correct"] for row in rows) / 6)
    assert metrics["consistent_accuracy"] == metrics["accuracy"]
    assert metrics["accuracy_first"] is None and metrics["position_flip_rate"] is None
    assert metrics["format_failure_rate"] == 0.0 and metrics["per_category"]["Reasoning"]["pairs"] == 6


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_judge_with_the_tiny_model_and_a_reward_model(tmp_path):
    data = tmp_path / "pairs.jsonl"
    records = [pair("What is 2 + 2?", "4", "5", "math-prm"), pair("Say hi.", "Hi!", "No.", "alpacaeval-easy")]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "judged"
    options = f"--model tiny-random --data {data} --max-new-tokens 4 --out {out}"
    table = run_cli("eval", "judge", *options.split())
    assert table.returncode == 0, table.stderr
    assert "overall" in table.stdout and "math-prm" in table.stdout and "Reasoning" in table.stdout
    result = json.loads((out / "judge.json").read_text())
    rows = read_jsonl(out / "samples.jsonl")
    assert result["pairs"] == 2 and len(rows) == 4 and result["template"] == "rise"
    assert {(row["pair_index"], row["order"]) for row in rows} == {
        (p, o) for p in (0, 1) for o in ("first", "swapped")
    }
    assert result["format_failure_rate"] == sum(row["verdict"] is None for row in rows) / 4
    assert result["accuracy"] == sum(row["correct"] for row in rows) / 4

    reward_dir = tmp_path / "rm"
    tiny_reward_model().save_pretrained(reward_dir)
    tiny_tokenizer().save_pretrained(reward_dir)
    scored = run_cli("eval", "judge", "--model", str(reward_dir), "--data", str(data), "--scorer", "reward_model",
                     "--json")  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout.strip().splitlines()[-1])
    expected = reward_model_pairs(tiny_reward_model(), tiny_tokenizer(), preference_pairs(str(data)))
    assert result["scorer"] == "reward_model" and result["accuracy"] == expected.metrics["accuracy"]

    data.write_text(json.dumps(pair("Q?", "same", "same")) + "\n")
    bad = run_cli("eval", "judge", "--model", "tiny-random", "--data", str(data))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "pairs.jsonl:1" in bad.stderr and "chosen and rejected are" in bad.stderr
