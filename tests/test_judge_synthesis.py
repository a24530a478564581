"""RISE-style judgment synthesis: the SFT set from swap-consistent pairs, the DPO set from the pairs still
judged wrong, on scripted judgments; and `posttrain judge synthesize` end to end on the tiny model."""

import json
import re

from posttrain.data.records import normalize_record
from posttrain.judges.synthesis import synthesize_judgments
from posttrain.rollout import SamplingParams
from tests.helpers import read_jsonl, run_cli
from tests.test_eval_judge import ScriptedEngine, pair, picks, shown


def test_sft_from_pairs_right_in_both_orders_and_dpo_from_the_rest():
    pairs = [pair(f"Q{i}?", f"right {i}", f"wrong {i}") for i in range(3)]

    def respond(prompt, sample):
        if "Q0?" in prompt:  # sample 0 wrong, sample 1 right, in both orders: admitted to SFT
            return picks(prompt, "wrong 0" if sample == 0 else "right 0")
        if "Q1?" in prompt:  # always position A: right when chosen is A, wrong when it is B
            return "The first one. [[A]]" if sample == 0 else "Hmm. [[A]]"
        return "no verdict here" if sample == 0 else picks(prompt, "wrong 2")  # Q2: format failure, then wrong

    engine = ScriptedEngine(respond)
    sft, dpo, summary = synthesize_judgments(engine, pairs, "rise", SamplingParams(temperature=1.0, n=2))
    assert [(row["pair_index"], row["order"]) for row in sft] == [(0, "first"), (0, "swapped")]
    assert all(row["completion"][0]["content"] == picks(row["prompt"][0]["content"], "right 0") for row in sft)
    # Q1: in its first order both samples are right (no rejected), in the swapped order both are wrong (no chosen)
    assert dpo == []
    assert summary["admitted_pairs"] == 1 and summary["sft_records"] == 2 and summary["dpo_records"] == 0
    assert summary["judgments"] == 12 and summary["format_failures"] == 2

    def mixed(prompt, sample):  # Q1: right once in each order; Q0 and Q2: always wrong
        if "Q1?" in prompt:
            return picks(prompt, "right 1") if sample == 0 else picks(prompt, "wrong 1")
        return picks(prompt, "wrong 0" if "Q0?" in prompt else "wrong 2")

    sft, dpo, summary = synthesize_judgments(ScriptedEngine(mixed), pairs, "rise", SamplingParams(n=2))
    # Q1 is right in both orders at least once: SFT; Q0 and Q2 are always wrong: no correct judgment, no DPO pair
    assert {row["pair_index"] for row in sft} == {1} and dpo == []

    def half(prompt, sample):  # Q0: right and wrong in the first order only; the swapped order always wrong
        answer_a = prompt.split("[Answer A]\n", 1)[1]
        if answer_a.startswith("right"):
            return picks(prompt, "right 0" if sample == 0 else "wrong 0")
        return picks(prompt, "wrong 0")

    sft, dpo, _ = synthesize_judgments(ScriptedEngine(half), pairs[:1], "rise", SamplingParams(n=2))
    assert sft == [] and len(dpo) == 1
    assert dpo[0]["order"] == "first" and dpo[0]["chosen"] != dpo[0]["rejected"]
    assert dpo[0]["chosen"][0]["content"].endswith("[[A]]") and dpo[0]["rejected"][0]["content"].endswith("[[B]]")
    assert normalize_record(dpo[0], "preference", "dpo.jsonl:1")["chosen"] == dpo[0]["chosen"]


def test_balance_orders_keeps_as_many_hard_pairs_of_each_order():
    from posttrain.judges.synthesis import balanced_by_order

    pairs = [pair(f"Q{i}?", f"right {i}", f"wrong {i}") for i in range(4)]

    def biased(prompt, sample):  # each pair right and wrong in one order, always wrong in the other: Q0-Q2 in
        q = re.search(r"Q(\d)\?", prompt).group(1)  # the first order (the right answer is A), Q3 in the swapped one
        right_is_a = shown(prompt)[0].startswith("right")
        mixed_order = right_is_a if q != "3" else not right_is_a
        return picks(prompt, f"right {q}" if mixed_order and sample == 0 else f"wrong {q}")

    _, dpo, summary = synthesize_judgments(ScriptedEngine(biased), pairs, "rise", SamplingParams(n=2))
    assert sorted(r["order"] for r in dpo) == ["first"] * 3 + ["swapped"]  # hard pairs: mostly one order
    _, kept, balanced = synthesize_judgments(ScriptedEngine(biased), pairs, "rise", SamplingParams(n=2),
                                             balance_orders=True)
    assert [(r["pair_index"], r["order"]) for r in kept] == [(0, "first"), (3, "swapped")]
    assert balanced["dpo_records"] == 2 and balanced["dpo_records_before_balancing"] == 4
    assert kept == balanced_by_order(dpo) and balanced_by_order([r for r in dpo if r["order"] == "first"]) == []


def test_cli_synthesize_writes_the_sets(tmp_path):
    out = tmp_path / "synth"
    done = run_cli("judge", "synthesize", "--judge", "tiny-random", "--pairs", "task:arithmetic", "--n", "2",
                   "--k", "1", "--max-new-tokens", "6", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 2 and summary["judgments"] == 4 and summary["judge"] == "tiny-random"
    assert len(read_jsonl(out / "sft.jsonl")) == summary["sft_records"]
    assert len(read_jsonl(out / "dpo.jsonl")) == summary["dpo_records"]


def test_critique_judge_writes_right_verdicts_from_the_pairs_critiques():
    from posttrain.data.tasks.judge_pairs import make_preference_pairs
    from posttrain.judges.synthesis import CritiqueJudge
    from posttrain.models import tiny_tokenizer

    pairs = make_preference_pairs(4, seed=0)
    sft, dpo, summary = synthesize_judgments(CritiqueJudge(pairs, tiny_tokenizer()), pairs, "rise",
                                             SamplingParams(n=1))
    assert summary["correct_rate"] == 1.0 and summary["admitted_pairs"] == 4 and dpo == []
    for row in sft:
        judgment = row["completion"][0]["content"]
        assert pairs[row["pair_index"]]["critique"] in judgment
        assert judgment.endswith("[[A]]" if row["order"] == "first" else "[[B]]")
        # the SFT trainer reads the record as written (conversational prompt and completion)
        assert normalize_record(row, "sft", "sft.jsonl:1")["completion"] == row["completion"]
    solved, _, _ = synthesize_judgments(CritiqueJudge(pairs, tiny_tokenizer(), style="solve_first", template="rise"), pairs, "rise",
                                        SamplingParams(n=1))
    for row in solved:  # the right solution written out first, then each answer's last line, then the verdict
        judgment, pair_ = row["completion"][0]["content"], pairs[row["pair_index"]]
        chosen, rejected = pair_["chosen"][0]["content"], pair_["rejected"][0]["content"]
        right = "A" if row["order"] == "first" else "B"
        a, b = (chosen, rejected) if right == "A" else (rejected, chosen)
        assert judgment == (f"Solving the question first:\n{chosen}\nAnswer A ends with {a.split(chr(10))[-1]}. "
                            f"Answer B ends with {b.split(chr(10))[-1]}. Answer {right} matches, so Answer {right} "
                            f"is correct.\n\n[[{right}]]")


def test_a_solve_first_critique_is_compared_by_its_arguments_not_its_solution():
    """RM-NLHF's process reward on the testbed: the synthesized solve-first judgment of the grm format must count as
    similar to its own reference critique (numbers backend), and another pair's critique must not."""
    from posttrain.data.tasks.judge_pairs import make_preference_pairs
    from posttrain.judges.grm import critique_arguments, parse_grm
    from posttrain.judges.similarity import build_similarity, quantize
    from posttrain.judges.synthesis import CritiqueJudge
    from posttrain.models import tiny_tokenizer

    pairs = make_preference_pairs(8, seed=3, levels=[2])
    rows, _, _ = synthesize_judgments(CritiqueJudge(pairs, tiny_tokenizer(), style="solve_first", template="grm"),
                                      pairs, "grm", SamplingParams(n=1))
    numbers = build_similarity("numbers")
    for row in rows:
        output = parse_grm(row["completion"][0]["content"])
        reference = pairs[row["pair_index"]]["critique"]
        other = pairs[(row["pair_index"] + 1) % len(pairs)]["critique"]
        assert output.critique.startswith("Solving it first: ") and output.arguments.startswith("Response A ends with")
        own, foreign = numbers.scores([output.arguments, output.arguments], [reference, other])
        assert quantize(own, numbers.default_threshold) == 1, (output.arguments, reference)
        assert quantize(foreign, numbers.default_threshold) == 0, (output.arguments, other)
    kept = parse_grm(rows[0]["completion"][0]["content"]).critique  # with the solution kept it would not count
    assert quantize(numbers.scores([kept], [pairs[rows[0]["pair_index"]]["critique"]])[0], numbers.default_threshold) == 0
    assert critique_arguments("Response B has an error. 3 + 4 is 7.") == "Response B has an error. 3 + 4 is 7."


def test_solve_first_judgments_fit_the_grm_and_s2j_formats():
    from posttrain.data.tasks.judge_pairs import make_preference_pairs
    from posttrain.grading import grade
    from posttrain.judges.grm import parse_grm
    from posttrain.judges.synthesis import CritiqueJudge
    from posttrain.models import tiny_tokenizer

    pairs = make_preference_pairs(6, seed=2, levels=[1])
    for template in ("grm", "s2j"):
        rows, _, summary = synthesize_judgments(CritiqueJudge(pairs, tiny_tokenizer(), style="solve_first",
                                                              template=template), pairs, template, SamplingParams(n=1))
        assert summary["correct_rate"] == 1.0 and len(rows) == 12
        for row in rows:
            pair_, judgment = pairs[row["pair_index"]], row["completion"][0]["content"]
            output = parse_grm(judgment, require_solve=template == "s2j")
            right = "A" if row["order"] == "first" else "B"
            assert output.error is None and output.choice == right
            # the evidence comes before the letter: both answers' last lines, then the critique of the wrong one
            rejected_last = pair_["rejected"][0]["content"].strip().split("\n")[-1]
            assert rejected_last in output.critique and pair_["critique"] in output.critique
            if template == "s2j":  # its own solution is the right one: S2J's solve score is 1
                assert grade(output.solve, str(pair_["reference"]))[1]
            else:
                assert output.critique.startswith("Solving it first: ")
    j1, _, _ = synthesize_judgments(CritiqueJudge(pairs, tiny_tokenizer(), style="solve_first", template="j1"),
                                    pairs, "j1", SamplingParams(n=1))
    for row in j1:  # J1's format: all the reasoning inside <think>, the verdict after it
        judgment = row["completion"][0]["content"]
        assert judgment.startswith("<think>Solving the question first:")
        assert judgment.endswith("</think>\n[[A]]" if row["order"] == "first" else "</think>\n[[B]]")


def test_judge_labels_keep_consistent_preferences_and_swap_the_ones_against_gold():
    from posttrain.judges.labeling import judge_labels

    pairs = [pair(f"Q{i}?", f"right {i}", f"wrong {i}") for i in range(4)]

    def respond(prompt, sample):
        if "Q0?" in prompt:
            return picks(prompt, "right 0")  # agrees with gold in both orders
        if "Q1?" in prompt:
            return picks(prompt, "wrong 1")  # prefers the gold rejected one in both orders: swapped
        if "Q2?" in prompt:
            return "Hmm. [[A]]"  # position A both times: a flip, dropped
        return "no verdict"  # format failure, dropped

    labelled, summary = judge_labels(ScriptedEngine(respond), pairs, "rise")
    assert [row["prompt"] for row in labelled] == ["Q0?", "Q1?"]
    assert labelled[0]["chosen"] == "right 0" and labelled[1]["chosen"] == "wrong 1"
    assert labelled[1]["rejected"] == "right 1" and normalize_record(labelled[1], "preference", "x")
    assert summary == {"pairs": 4, "labelled": 2, "agree_with_gold": 1, "agreement": 0.5, "position_flips": 1,
                       "format_failures": 1, "keep": "consistent"}
    labelled, summary = judge_labels(ScriptedEngine(respond), pairs, "rise", keep="first")
    assert [row["prompt"] for row in labelled] == ["Q0?", "Q1?", "Q2?"] and labelled[2]["chosen"] == "right 2"
