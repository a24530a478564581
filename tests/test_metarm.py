"""MetaRM: the regression objective (loss, records, training through `posttrain train`), the MetaRM object
(scoring, online updates, checkpoints, refusals) and the metarm reward inside GRM training."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from posttrain.config import load_config
from posttrain.data import validate_records
from posttrain.data.records import normalize_record
from posttrain.errors import CheckpointError, DataError, ModelError
from posttrain.judges.metarm import MetaRM, metarm_bonus, metarm_text
from posttrain.models import tiny_tokenizer
from posttrain.ops import regression_loss
from posttrain.trainers.pipeline import final_weights
from posttrain.trainers.run import train
from tests.helpers import (
    PicklePayload,
    assert_same_step_gradients,
    read_jsonl,
    step_gradients,
    tiny_overrides,
    train_steps,
)


def test_regression_loss_and_gradient_by_hand():
    scores = torch.tensor([0.5, 2.0, -1.0], requires_grad=True)
    labels = torch.tensor([1.0, 1.5, 0.0])
    loss = regression_loss(scores, labels)
    assert loss.item() == pytest.approx((0.25 + 0.25 + 1.0) / 3)
    loss.backward()
    assert torch.allclose(scores.grad, 2 * (scores.detach() - labels) / 3)
    # a micro-batch's share of a 6-row global batch
    assert regression_loss(scores.detach(), labels, normalizer=6).item() == pytest.approx(1.5 / 6)


def test_regression_records():
    assert normalize_record({"text": "hi", "label": 1}, "regression", "f:1")["label"] == 1.0
    record = normalize_record({"prompt": "q", "completion": "a", "label": 0.5}, "regression", "f:2")
    assert record["prompt"] == "q" and record["label"] == 0.5
    for bad, field in [({"text": "hi"}, "label"), ({"text": "hi", "label": "high"}, "label"),
                       ({"text": "hi", "label": float("nan")}, "label"), ({"text": " ", "label": 1}, "text")]:
        with pytest.raises(DataError) as error:
            normalize_record(bad, "regression", "data.jsonl:7")
        assert f"data.jsonl:7:{field}" in str(error.value)


# texts of varied lengths, so micro-batches and token budgets pad to different widths
VARIED = [{"text": "word " * (1 + 3 * (i % 4)) + f"item {i}", "label": [0.0, 1.0, 1.5][i % 3]} for i in range(8)]


def regression_method(tmp_path, *settings):
    from posttrain.trainers.distributed import Processes
    from posttrain.trainers.regression import RegressionMethod

    config = load_config(None, [*tiny_overrides(tmp_path, "direct", method="reward_model", **{
        "reward_model.objective": "regression", "train.batch_size": 8, "train.micro_batch_tokens": 0}), *settings])
    return RegressionMethod(config, validate_records(VARIED, kind="regression").records, tiny_tokenizer(),
                            Processes("cpu"))


def test_regression_micro_batches_and_token_budgets_give_the_gradient_of_one_big_batch(tmp_path):
    from posttrain.models.reward import load_reward_model
    from tests.test_preference import perturb

    model = load_reward_model("tiny-random", pad_token_id=tiny_tokenizer().pad_token_id)
    perturb(model)
    model.double()  # float64: what is left of any difference is the split, not rounding
    settings = ((), ("train.batch_size=3",), ("train.micro_batch_tokens=24",))
    methods = [regression_method(tmp_path, *s) for s in settings]
    indices = list(range(len(VARIED)))
    works = [m.step_batches(model, indices, indices, step=0) for m in methods]
    assert [len(w.micro_batches) for w in works[:2]] == [1, 3] and len(works[2].micro_batches) > 3
    loss_whole, grads_whole = step_gradients(model, methods[0], works[0])
    # the whole batch's loss is the MSE of the classifier's own scores, one unpadded row at a time
    with torch.no_grad():
        scores = torch.tensor([float(model(input_ids=torch.tensor([row])).logits[0, 0]) for row in methods[0].rows],
                              dtype=torch.float64)
    labels = torch.tensor([row["label"] for row in VARIED], dtype=torch.float64)
    assert loss_whole == pytest.approx(float(((scores - labels) ** 2).mean()), rel=1e-8)
    assert_same_step_gradients(model, (loss_whole, grads_whole), methods[1:], works[1:])


def test_regression_records_from_a_file_are_checked_counted_and_rendered(tmp_path):
    from posttrain.data import read_records
    from posttrain.data.regression import regression_text

    rows = [{"text": "fine", "label": 1}, {"text": "no label"}, {"text": "x", "label": float("inf")},
            {"text": "", "label": 1.0}, {"prompt": "q", "completion": "a", "label": 0},
            {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}],
             "label": 1.5}]
    path = tmp_path / "reg.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError) as error:
        read_records(path, kind="regression")
    assert f"{path}:2:label" in str(error.value) and error.value.fix
    records = read_records(path, kind="regression", skip_invalid=True)
    assert records.skipped == 3 and [r["label"] for r in records.records] == [1.0, 0.0, 1.5]
    assert [p.split(": ")[0] for p in records.problems] == [f"{path}:2:label", f"{path}:3:label", f"{path}:4:text"]
    tokenizer = tiny_tokenizer()
    assert regression_text(records.records[0], tokenizer) == "fine"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert regression_text(records.records[2], tokenizer) == tokenizer.apply_chat_template(messages, tokenize=False)
    # through `posttrain train`: the bad records are skipped and counted in the run's data summary
    config = load_config(None, tiny_overrides(tmp_path, "skip", method="reward_model", **{
        "reward_model.objective": "regression", "data.train": f"{{path: {path}}}", "data.skip_invalid": True,
        "train.max_steps": 1, "data.max_length": 64}))
    train(config)
    summary = json.loads((config.run_dir / "data_summary.json").read_text())
    assert summary["examples"] == 3 and summary["skipped"] == 3
    assert "mse" in train_steps(config.run_dir)[1]

def marker_data(tmp_path, n: int = 16):
    """Texts labelled 1.5 when they contain "GOOD", else 0: learnable from the last tokens."""
    rows = [{"text": f"critique {i} {'GOOD' if i % 2 else 'bad'}", "label": 1.5 if i % 2 else 0.0} for i in range(n)]
    path = tmp_path / "metarm.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, rows


def train_metarm(tmp_path, steps: int = 12):
    path, rows = marker_data(tmp_path)
    config = load_config(None, tiny_overrides(tmp_path, "metarm", method="reward_model", **{
        "reward_model.objective": "regression", "data.train": f"{{path: {path}}}", "train.max_steps": steps,
        "train.batch_size": 8, "optim.lr": 3e-3, "data.max_length": 64}))
    train(config)
    return config.run_dir, rows


def test_posttrain_train_fits_a_regression_head(tmp_path):
    run_dir, rows = train_metarm(tmp_path)
    steps = train_steps(run_dir)
    assert steps[12]["mse"] < 0.5 * steps[1]["mse"] and "mae" in steps[12]
    meta = MetaRM.load(str(final_weights(run_dir)))
    scores = meta.score([row["text"] for row in rows])
    good = [s for s, row in zip(scores, rows, strict=True) if row["label"] > 0]
    bad = [s for s, row in zip(scores, rows, strict=True) if row["label"] == 0]
    assert min(good) > max(bad)  # the head separates the two labels


def test_metarm_refuses_an_untrained_head_and_another_base_model(tmp_path):
    with pytest.raises(ModelError):
        MetaRM.load("tiny-random")
    run_dir, _ = train_metarm(tmp_path, steps=1)
    other = type("Other", (), {"get_vocab": lambda self: {"a": 0}, "__len__": lambda self: 1})()
    with pytest.raises(ModelError, match="another base model"):
        MetaRM.load(str(final_weights(run_dir)), policy_tokenizer=other)


def test_update_save_restore_round_trip(tmp_path):
    run_dir, rows = train_metarm(tmp_path, steps=1)
    texts, labels = [row["text"] for row in rows[:6]], [row["label"] for row in rows[:6]]
    first = MetaRM.load(str(final_weights(run_dir)), online_lr=1e-3, batch_size=4)
    before = first.score(texts)
    metrics = first.update(texts, labels)
    assert metrics["metarm/updated_examples"] == 6 and first.score(texts) != before
    first.save(tmp_path / "state")
    second = MetaRM.load(str(final_weights(run_dir)), online_lr=1e-3, batch_size=4)
    second.restore(tmp_path / "state")
    assert second.score(texts) == first.score(texts)
    first.update(texts, labels), second.update(texts, labels)  # the optimizer state came back too
    with pytest.raises(DataError, match="6 texts but 5 labels"):
        first.update(texts, labels[:5])
    with pytest.raises(DataError, match="finite"):
        first.update(texts[:1], [float("nan")])
    assert second.score(texts) == pytest.approx(first.score(texts), abs=1e-6)
    marker = tmp_path / "payload-ran"
    (tmp_path / "planted").mkdir()
    with (tmp_path / "planted" / "metarm.pt").open("wb") as handle:  # what a crafted checkpoint would hold
        pickle.dump({"model": PicklePayload(marker)}, handle)
    with pytest.raises(CheckpointError, match="metarm.pt"):
        second.restore(tmp_path / "planted")
    assert not marker.exists()


def test_metarm_text_and_bonus():
    text = metarm_text("Q?", "ans A", "ans B", "B is wrong")
    assert text.startswith("<conv_his>[Question]\nQ?") and text.endswith("<critics>B is wrong</critics>")
    assert text.index("ans A") < text.index("ans B") < text.index("</conv_his>")
    assert metarm_bonus(1.4) == pytest.approx(0.4) and metarm_bonus(0.7) == 0.0


def test_grm_training_with_the_online_metarm_logs_calibration_and_checkpoints_it(tmp_path, monkeypatch):
    run_dir, _ = train_metarm(tmp_path, steps=1)
    meta_path = str(final_weights(run_dir))
    overrides = tiny_overrides(tmp_path, "grm-metarm", method="grpo", **{
        "data.train": "{task: judge_arithmetic, n: 8, seed: 0}", "rl.judge": "{template: grm, hide_critiques: 0.5}",
        "rollout.prompts_per_step": 4, "rollout.samples_per_prompt": 2, "rollout.max_new_tokens": 8, "train.max_steps": 2,
        "train.save_every": 1, "rl.rewards": f"{{functions: [{{name: metarm, args: {{model: {meta_path}}}}}]}}"})
    # the tiny policy writes no well-formed judgment; score a fixed well-formed one instead, right or wrong by
    # the record's gold verdict, so both kinds of record reach the rewards and the MetaRM's calibration
    from posttrain.judges import grm, grm_scores
    from posttrain.rewards import grm as grm_rewards

    seen = []

    def scripted(completion, template):
        seen.append(completion)
        choice = "[[A]]" if len(seen) % 3 else "[[B]]"
        return grm.parse_grm(f"<critics>Step 1 is wrong: 7 - 4 is 3.</critics><choice>{choice}</choice>")

    monkeypatch.setattr(grm_rewards, "parsed", scripted)
    monkeypatch.setattr(grm_scores, "parsed", scripted)
    train(load_config(None, overrides))
    steps = train_steps(tmp_path / "grm-metarm")
    logged = set(steps[1]) | set(steps[2])  # a step whose tasks all had hidden critiques logs no calibration
    assert {"metarm/mse", "metarm/rollouts", "metarm/updated_examples"} <= logged
    assert (tmp_path / "grm-metarm" / "checkpoints" / "step-2" / "rank0" / "rewards" / "metarm" / "metarm.pt").is_file()
    rewards = {round(row["reward_metarm"], 6) for row in read_jsonl(tmp_path / "grm-metarm" / "samples.jsonl")}
    # critique-bearing tasks: the rule reward (0, 1 or 1.5); hidden ones: 0, or 1 plus a small MetaRM bonus
    assert rewards <= {0.0, 1.0, 1.5} | {r for r in rewards if 1.0 < r < 1.5} and any(1 < r < 1.5 for r in rewards)


def test_s2j_on_a_subjective_task_compares_its_solution_with_the_winner_under_a_scalar_reward_model(tmp_path):
    from posttrain.judges.grm_scores import ScalarRewardModel
    from posttrain.models import load_tokenizer
    from posttrain.models.reward import load_reward_model, score_sequences
    from posttrain.rewards.grm import s2j_reward

    run_dir, _ = train_metarm(tmp_path, steps=1)
    path = str(final_weights(run_dir))
    record = {"gold": "B", "question": "Write a greeting.", "response_a": "go away", "response_b": "Hello GOOD"}
    output = "<solve>Hi there GOOD</solve><critics>B is kind.</critics><choice>[[B]]</choice>"
    scorer = ScalarRewardModel(path)
    own, winner = scorer.scores(record["question"], ["Hi there GOOD", "Hello GOOD"])
    tokenizer = load_tokenizer(path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": record["question"]},
                                          {"role": "assistant", "content": "Hello GOOD"}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the conversation as SFT sees it
    direct = score_sequences(load_reward_model(path, require_head=True), [ids])[0]
    assert winner == pytest.approx(direct, abs=1e-4)
    assert s2j_reward("", output, record, reward_model=scorer) == 1.0 + (1.0 if own >= winner else 0.0)


def test_metarm_cold_start_records_carry_the_rule_reward_of_each_well_formed_critique():
    from posttrain.data.tasks.judge_pairs import make_preference_pairs
    from posttrain.judges.metarm_data import metarm_records
    from posttrain.rollout import SamplingParams
    from tests.test_eval_judge import ScriptedEngine

    pairs = make_preference_pairs(3, seed=0)

    def respond(prompt, sample):
        pair = next(p for p in pairs if p["question"] in prompt)
        shown_a = prompt.split("[The Start of Response A]\n", 1)[1].split("\n[The End", 1)[0]
        right = "A" if shown_a == pair["chosen"][0]["content"] else "B"
        if sample == 0:  # right verdict, the pair's own critique: o = 1, q = 1
            return f"<critics>{pair['critique']}</critics><choice>[[{right}]]</choice>"
        if sample == 1:  # right verdict, a critique naming no numbers: o = 1, q = 0
            return f"<critics>One response is wrong.</critics><choice>[[{right}]]</choice>"
        if sample == 2:  # wrong verdict: 0
            return f"<critics>{pair['critique']}</critics><choice>[[{'B' if right == 'A' else 'A'}]]</choice>"
        return "no tags at all"  # a format failure: left out

    records, summary = metarm_records(ScriptedEngine(respond), pairs, SamplingParams(n=4), backend="numbers")
    assert summary["judgments"] == 24 and summary["format_failures"] == 6 and len(records) == 18
    assert summary["labels"] == {"0.0": 6, "1.0": 6, "1.5": 6}
    first = records[0]
    assert first["text"].startswith("<conv_his>[Question]") and first["label"] == 1.5
    assert normalize_record({"text": first["text"], "label": first["label"]}, "regression", "x")["label"] == 1.5
