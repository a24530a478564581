"""Self-rewarding loops: Kendall's τ and CREAM's consistency rate, CREAM's consistency-regularized DPO as per-pair
label smoothing, the self-judged best-vs-worst pairs (pointwise and both-order pairwise), SCIR agreement, the
``self_judge`` stage's options, and the shipped self-rewarding pipeline."""

import json
import math
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from posttrain.config import load_config
from posttrain.data import validate_records
from posttrain.errors import ConfigError, DataError
from posttrain.judges.ranking import consistency_rates, kendall_tau
from posttrain.judges.self_judging import Judged, judge_responses
from posttrain.judges.self_rewarding import SelfJudgeOptions, best_and_worst, self_rewarding_pairs
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.ops import dpo_loss
from posttrain.rollout import Generation
from posttrain.trainers.distributed import Processes
from posttrain.trainers.pipeline import load_pipeline
from posttrain.trainers.preference import build_pair_method
from tests.helpers import tiny_overrides

RECIPES = Path(__file__).resolve().parents[1] / "posttrain" / "recipes"


# ------------------------------------------------------------------------------------ Kendall's tau


@pytest.mark.parametrize(("first", "second", "expected"), [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 3, 4], [1, 3, 2, 4], 4 / 6),  # one discordant pair of six: (5 − 1) / 6
    ([1, 2, 2], [1, 2, 3], 2 / math.sqrt(6)),  # n_c = 2, one pair tied in the first only: 2 / √(3·2)
    ([1, 1, 2, 2], [1, 2, 1, 2], 0.0),  # n_c = n_d = 1, t_1 = t_2 = 2: 0 / √(4·4)
    # (0,1) c; (0,2) tied in the second only; (0,3) d; (1,2) c; (1,3) c; (2,3) tied in the first only:
    # n_c = 3, n_d = 1, t_1 = t_2 = 1: (3 − 1) / √(5·5)
    ([3, 1, 2, 2], [2, 1, 2, 3], 0.4),
])
def test_kendall_tau_b_matches_hand_computed_values(first, second, expected):
    assert kendall_tau(first, second) == pytest.approx(expected)


def test_kendall_tau_is_undefined_without_untied_pairs_and_refuses_mismatched_lists():
    assert kendall_tau([2, 2, 2], [1, 2, 3]) is None
    assert kendall_tau([1], [1]) is None
    with pytest.raises(ValueError, match="same items"):
        kendall_tau([1, 2], [1, 2, 3])


def test_consistency_rates_per_data_set_and_per_prompt():
    taus = [1.0, -1.0, 0.5, None]  # C = 1, 0, 0.75; mean 7/12
    assert consistency_rates(taus, "dataset") == pytest.approx([7 / 12] * 4)
    assert consistency_rates(taus, "prompt") == pytest.approx([1.0, 0.0, 0.75, 7 / 12])
    assert consistency_rates([None, None], "prompt") == [1.0, 1.0]


# ------------------------------------------------------------------------------- CREAM = per-pair ε


def _pair_inputs(size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = [torch.randn(size, generator=generator, dtype=torch.float64) * 3 for _ in range(4)]
    values[0].requires_grad_(True)
    values[1].requires_grad_(True)
    return values


def test_cream_loss_is_dpo_with_per_pair_label_smoothing_one_minus_c():
    chosen, rejected, ref_chosen, ref_rejected = _pair_inputs()
    consistency = torch.rand(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    beta = 0.3
    result = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=1 - consistency)
    logits = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    reverse = beta * ((rejected - ref_rejected) - (chosen - ref_chosen))  # CREAM's reverse_dpo_logits
    cream = consistency * -F.logsigmoid(logits) + (1 - consistency) * -F.logsigmoid(reverse)
    torch.testing.assert_close(result.losses, cream)


def test_consistency_one_is_plain_dpo_and_one_half_cancels_at_the_reference():
    chosen, rejected, ref_chosen, ref_rejected = _pair_inputs()
    plain = dpo_loss(chosen, rejected, ref_chosen, ref_rejected).losses
    full = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, label_smoothing=torch.zeros(16)).losses
    torch.testing.assert_close(full, plain)
    # gradient in z = β·h is −(C − σ(z)): zero for C = 0.5 where the policy is the reference (h = 0) ...
    at_reference = [chosen.detach().clone().requires_grad_(True), rejected.detach().clone().requires_grad_(True)]
    half = torch.full((16,), 0.5, dtype=torch.float64)
    losses = dpo_loss(*at_reference, at_reference[0].detach(), at_reference[1].detach(), label_smoothing=half).losses
    for gradient in torch.autograd.grad(losses.sum(), at_reference):
        torch.testing.assert_close(gradient, torch.zeros_like(gradient))
    # ... and elsewhere it pulls the margin back toward 0: dL/dπ_c = β·(σ(z) − C)
    beta, consistency = 0.1, torch.rand(16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    losses = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=1 - consistency).losses
    (gradient,) = torch.autograd.grad(losses.sum(), [chosen])
    z = beta * ((chosen - ref_chosen) - (rejected - ref_rejected)).detach()
    torch.testing.assert_close(gradient, beta * (torch.sigmoid(z) - consistency))


def test_per_pair_label_smoothing_is_refused_outside_0_1_and_for_other_kinds():
    chosen, rejected, ref_chosen, ref_rejected = _pair_inputs(size=2)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        dpo_loss(chosen, rejected, ref_chosen, ref_rejected, label_smoothing=torch.tensor([0.2, 1.5]))
    with pytest.raises(ValueError, match="robust"):
        dpo_loss(chosen, rejected, ref_chosen, ref_rejected, kind="robust", label_smoothing=torch.tensor([0.2, 0.1]))


PAIRS = [{"prompt": f"Q{i}: pick one", "chosen": "yes" * (1 + i % 3), "rejected": "no!" * (1 + (i + 1) % 4)}
         for i in range(4)]


def _method(tmp_path, smoothing, *settings, move=True):
    rows = [{**pair, "label_smoothing": value} for pair, value in zip(PAIRS, smoothing, strict=True)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = load_config(None, [*tiny_overrides(tmp_path, "cream", method="dpo", **{"data.train": f"{{path: {path}}}"}),
                                *settings])
    records = validate_records(rows, kind="preference").records
    model = tiny_model()
    method, _ = build_pair_method(config, records, model, tiny_tokenizer(), Processes("cpu"))
    if move:  # the policy moves away from the reference, so the DPO gradient is not zero
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    return method, model


def _step_loss_and_gradients(method, model):
    indices = list(range(len(method.pairs)))
    work = method.step_batches(model, indices, indices, step=0)
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in work.micro_batches:
        loss, _ = method.loss(model, batch, work.totals)
        loss.backward()
        total += float(loss)
    return total, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_the_preference_trainer_reads_each_pair_s_label_smoothing_field(tmp_path):
    field = "preference.label_smoothing_field=label_smoothing"
    plain, plain_model = _method(tmp_path, [0.0] * 4)
    weighted, weighted_model = _method(tmp_path, [0.0] * 4, field)
    assert _step_loss_and_gradients(plain, plain_model)[0] == pytest.approx(
        _step_loss_and_gradients(weighted, weighted_model)[0])
    half, half_model = _method(tmp_path, [0.5] * 4, field, move=False)  # the first step: policy = reference
    loss, gradients = _step_loss_and_gradients(half, half_model)
    assert loss == pytest.approx(math.log(2))
    assert max(float(g.abs().max()) for g in gradients) < 1e-6
    smoothed, smoothed_model = _method(tmp_path, [0.2] * 4, "preference.label_smoothing=0.2")
    assert _step_loss_and_gradients(smoothed, smoothed_model)[0] == pytest.approx(
        _step_loss_and_gradients(*_method(tmp_path, [0.2] * 4, field))[0])


def test_label_smoothing_field_errors(tmp_path):
    with pytest.raises(DataError, match=r"number in \[0, 1\]") as error:
        _method(tmp_path, [0.0, 1.5, 0.0, 0.0], "preference.label_smoothing_field=label_smoothing")
    assert error.value.where.endswith(":label_smoothing")
    with pytest.raises(ConfigError, match="label_smoothing_field"):
        load_config(None, [*tiny_overrides(tmp_path, "x", method="dpo"), "preference.kind=ipo",
                           "preference.label_smoothing_field=label_smoothing"])


# ------------------------------------------------------------------------------------ judged pairs


class ScriptedJudge:
    """A rollout engine whose judgments come from ``verdict(prompt_text)``; the tiny tokenizer decodes prompts."""

    def __init__(self, verdict):
        self.tokenizer = tiny_tokenizer()
        self.verdict = verdict
        self.prompts = []

    def generate(self, prompt_ids, params):
        out = []
        for index, ids in enumerate(prompt_ids):
            text = self.tokenizer.decode(ids)
            self.prompts.append(text)
            out.append(Generation(index, 0, list(ids), [], [], self.verdict(text), "eos"))
        return out


def _answers(text):
    """The two answers of a ``rise`` prompt, as shown (A, B)."""
    return re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\n", text, re.S).groups()


def test_best_and_worst_drop_ties_and_unscored_prompts():
    assert best_and_worst([3.0, 7.0, 1.0, 7.0]) == (1, 2)  # the first of the equal best
    assert best_and_worst([5.0, 5.0, None]) is None  # a tie
    assert best_and_worst([None, 4.0, None]) is None  # fewer than two scored


def test_pointwise_scores_and_format_failures():
    judge = ScriptedJudge(lambda text: "fine [[8]]" if "zqhigh" in text else ("[[2]]" if "zqlow" in text else "hmm"))
    judged = judge_responses(judge, "pointwise", None, ["q"], [["zqhigh", "zqlow", "zqnone"]])
    assert judged.scores == [[8.0, 2.0, None]]
    assert (judged.judgments, judged.format_failures) == (3, 1)


def test_a_prefilled_pointwise_judgment_starts_with_the_prefill():
    judge = ScriptedJudge(lambda text: "5]] fine" if text.endswith("Score: [[") else "no score")
    judged = judge_responses(judge, "pointwise", None, ["q"], [["zqa", "zqb"]], prefill="Score: [[")
    assert judged.scores == [[5.0, 5.0]] and judged.outputs == [["Score: [[5]] fine"] * 2]
    with pytest.raises(ValueError, match="pointwise judge only"):
        judge_responses(judge, "pairwise", None, ["q"], [["zqa", "zqb"]], prefill="[[")


def test_pairwise_wins_count_both_orders():
    def longer_wins(text):
        a, b = _answers(text)
        return "[[A]]" if len(a) > len(b) else "[[B]]"

    judge = ScriptedJudge(longer_wins)
    judged = judge_responses(judge, "pairwise", None, ["q"], [["xx", "xxxx", "x", "xx"]])
    # 2 identical responses are not judged: 5 pairs, 10 judgments; "xxxx" beats 3 others in both orders
    assert judged.judgments == 10
    assert judged.scores == [[2.0, 6.0, 0.0, 2.0]]
    assert judged.orders == [([1.0, 3.0, 0.0, 1.0], [1.0, 3.0, 0.0, 1.0])]


def test_a_position_biased_pairwise_judge_ties_everything_and_its_orders_disagree():
    judge = ScriptedJudge(lambda text: "[[A]]")
    judged = judge_responses(judge, "pairwise", None, ["q"], [["r0", "r1", "r2"]])
    first, swapped = judged.orders[0]
    assert first == [2.0, 1.0, 0.0] and swapped == [0.0, 1.0, 2.0]
    assert judged.scores == [[2.0, 2.0, 2.0]] and best_and_worst(judged.scores[0]) is None
    assert kendall_tau(first, swapped) == -1.0


def _options(**values):
    return SelfJudgeOptions.parse({"model": "tiny-random", **values})


RECORDS = [{"prompt": [{"role": "user", "content": f"q{i}"}], "reference": str(i)} for i in range(3)]
TEXTS = [["#### 0", "#### 5", "#### 7"], ["#### 1", "#### 1", "#### 2"], ["#### 2", "#### 3", "#### 4"]]


def test_pairs_are_best_against_worst_with_metadata_and_counts():
    judged = Judged([[9.0, 2.0, 5.0], [4.0, 4.0, 4.0], [None, 6.0, None]], judgments=9, format_failures=2)
    pairs, summary = self_rewarding_pairs(RECORDS, TEXTS, judged, [None] * 3, {}, _options())
    assert len(pairs) == 1
    pair = pairs[0]
    assert pair["chosen"] == [{"role": "assistant", "content": "#### 0"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "#### 5"}]
    assert (pair["chosen_index"], pair["rejected_index"], pair["label_smoothing"]) == (0, 1, 0.0)
    assert (pair["chosen_correct"], pair["rejected_correct"]) == (True, False)
    assert (summary["pairs"], summary["ties_dropped"], summary["unscored_dropped"]) == (1, 1, 1)
    assert summary["mean_score_spread"] == 7.0 and summary["format_failure_rate"] == pytest.approx(2 / 9)
    assert summary["chosen_accuracy"] == 1.0 and summary["response_accuracy"] == pytest.approx(4 / 9)


def test_cream_weights_and_filters_pairs_by_consistency():
    judged = Judged([[9.0, 2.0, 5.0], [1.0, 3.0, 2.0], [3.0, 1.0, 2.0]])
    texts = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    taus = [1.0, -1.0, None]
    pairs, summary = self_rewarding_pairs(RECORDS, texts, judged, taus, {}, _options(
        consistency="orders", judge="pairwise", consistency_scope="prompt"))
    assert [p["label_smoothing"] for p in pairs] == pytest.approx([0.0, 1.0, 0.5])  # undefined τ: the mean C
    assert summary["mean_tau"] == 0.0 and summary["undefined_tau"] == 1
    pairs, summary = self_rewarding_pairs(RECORDS, texts, judged, taus, {}, _options(
        consistency="orders", judge="pairwise", consistency_use="filter", min_tau=0.5))
    assert [p["prompt_index"] for p in pairs] == [0] and summary["below_min_tau_dropped"] == 2
    assert pairs[0]["label_smoothing"] == 0.0


def test_scir_keeps_only_pairs_every_internal_signal_agrees_on():
    judged = Judged([[9.0, 2.0, 5.0], [1.0, 3.0, 2.0], [3.0, 1.0, 2.0]])
    texts = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
    signals = {"self_certainty": [[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]],  # agrees, agrees, ties
               "laser": [[-19.0, -20.0, 0.0], [-20.0, -21.0, 0.0], [-19.0, -20.0, 0.0]]}  # agrees, disagrees, agrees
    pairs, summary = self_rewarding_pairs(RECORDS, texts, judged, [None] * 3, signals, _options(
        agreement=["judge", "self_certainty", "laser"]))
    assert [p["prompt_index"] for p in pairs] == [0]
    assert pairs[0]["chosen_self_certainty"] == 2.0 and pairs[0]["rejected_laser"] == -20.0
    assert summary["agreement_dropped"] == 2
    assert summary["disagreed_by_signal"] == {"self_certainty": 1, "laser": 1}


# ------------------------------------------------------------------------------------ options, pipeline


@pytest.mark.parametrize(("values", "message"), [
    ({"consistency": "previous"}, "previous iteration's model"),
    ({"consistency": "orders"}, "set judge: pairwise"),
    ({"previous": "x"}, "only read with consistency: previous or the implicit"),
    ({"agreement": "implicit"}, "need the previous iteration's"),
    ({"samples": 1}, "at least 2 samples"),
    ({"agreement": "judge,vibes"}, "unknown agreement signal"),
    ({"min_tau": 2}, "Kendall tau in"),
    ({"judge": "pairwise", "judge_prefill": "[["}, "pairwise judge takes none"),
    ({"judge": "listwise"}, "judge"),
    ({"samplez": 3}, "unknown option 'samplez'"),
])
def test_self_judge_options_errors_name_the_option(values, message):
    with pytest.raises(ConfigError, match=message):
        _options(**values)


def test_a_bad_self_judge_stage_is_refused_when_the_pipeline_loads(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(json.dumps({"stages": [{"name": "judge-1", "kind": "self_judge",
                                            "args": {"model": "tiny-random", "consistency": "orders"}}]}))
    with pytest.raises(ConfigError, match="pairwise") as error:
        load_pipeline(path)
    assert "stages.judge-1.args" in error.value.where


def test_the_self_rewarding_pipeline_chains_judging_and_dpo():
    path = RECIPES / "self_rewarding" / "pipeline.yaml"
    pipeline = load_pipeline(path)
    kinds = [(stage.kind, stage.from_) for stage in pipeline.stages]
    assert kinds[0] == ("self_judge", None) and ("train", None) in kinds
    judges = [stage for stage in pipeline.stages if stage.kind == "self_judge"]
    assert len(judges) >= 2 and judges[1].args["consistency"] == "previous"
    for stage in pipeline.stages:
        if stage.kind == "train":
            config = load_config(path.parent / stage.recipe, [f"{k}={v}" for k, v in stage.set.items()])
            assert config.method == "dpo" and config.eval.kind == "math"


def test_unrelated_rankings_give_a_consistency_near_one_half():
    """A judge unrelated to the previous one gives τ near 0 over many prompts, so C near 0.5 (no signal)."""
    rng = random.Random(0)
    taus = [kendall_tau([rng.random() for _ in range(8)], [rng.random() for _ in range(8)]) for _ in range(400)]
    assert abs(consistency_rates(taus)[0] - 0.5) < 0.03


def test_the_self_judge_stage_runs_end_to_end_on_the_tiny_model(tmp_path):
    from posttrain.judges.self_rewarding import run_self_judge

    options = _options(data="task:arithmetic", n=2, samples=3, max_new_tokens=6, judge_max_new_tokens=4,
                       judge="pairwise", consistency="previous", previous="tiny-random",
                       agreement=["judge", "self_certainty", "laser", "implicit"], out_dir=tmp_path)
    summary = run_self_judge(options)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == summary
    assert summary["prompts"] == 2 and summary["responses"] == 6
    assert summary["judgments"] <= 2 * 2 * 3  # both orders of at most 3 pairs per prompt (identical ones unjudged)
    assert summary["mean_tau"] is None or -1 <= summary["mean_tau"] <= 1
    dropped = (summary["ties_dropped"] + summary["unscored_dropped"] + summary["identical_dropped"]
               + summary["agreement_dropped"])
    assert summary["pairs"] + dropped == 2  # every prompt is either a pair or counted as dropped
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all("self_certainty" in row and "laser" in row for row in samples)
    # the previous model is the same tiny model: its implicit reward log π_θ(y|x) − log π_prev(y|x) is 0
    assert all(abs(row["implicit"]) < 1e-4 for row in samples)
    assert len((tmp_path / "dpo.jsonl").read_text().splitlines()) == summary["pairs"]


def test_the_expected_score_is_the_judge_s_mean_over_single_token_scores():
    from posttrain.data import encode_prompts
    from posttrain.judges.formats import get_template
    from posttrain.judges.self_judging import expected_pointwise

    model, tokenizer = tiny_model(), tiny_tokenizer()
    responses = [["2 + 2 = 4", "it is 5"], ["7"]]
    judged = expected_pointwise(model, tokenizer, None, ["2 + 2?", "3 + 4?"], responses, "Score: [[", batch_size=2)
    template = get_template("pointwise")
    digits = [tokenizer.encode(str(value), add_special_tokens=False)[0] for value in range(1, 10)]  # "10": 2 tokens
    expected = []
    for question, texts in zip(["2 + 2?", "3 + 4?"], responses, strict=True):
        for text in texts:
            ids = encode_prompts([{"prompt": template.render(question, text)}], tokenizer)[0]
            ids = ids + tokenizer.encode("Score: [[", add_special_tokens=False)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1, digits].double()
            expected.append(float((logits.softmax(-1) * torch.arange(1, 10, dtype=torch.float64)).sum()))
    assert [score for group in judged.scores for score in group] == pytest.approx(expected, rel=1e-4)
    assert judged.judgments == 3 and judged.format_failures == 0
