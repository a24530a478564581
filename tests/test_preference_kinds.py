"""Implicit-prompt preference files in DPO, reward-model training and ``eval judge``; KTO on unpaired records and
ORPO: losses against full-logits log-probs, micro-batch equivalence, short training runs, bad input."""

import json

import pytest
import torch

from posttrain.config import load_config
from posttrain.data import validate_records
from posttrain.data.preference import tokenize_unpaired
from posttrain.errors import ConfigError, DataError
from posttrain.evals.judge import JudgeEvalOptions, run_judge_eval
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.ops import dpo_loss, kto_loss
from posttrain.trainers.distributed import Processes
from posttrain.trainers.preference import REFERENCE_FILE, build_pair_method
from posttrain.trainers.run import train
from tests.helpers import assert_same_step_gradients, step_gradients, tiny_overrides, train_steps
from tests.test_preference import PAIRS, pair_logps, perturb, write_pairs

MARK = "\n\nHuman: {}\n\nAssistant:"


def hh_rows(pairs=PAIRS):
    """The pairs as Anthropic HH transcripts (implicit prompt) and as the explicit records they must equal."""
    implicit = [{side: MARK.format(p["prompt"]) + " " + p[side] for side in ("chosen", "rejected")} for p in pairs]
    explicit = [{"prompt": MARK.format(p["prompt"]), **{side: " " + p[side] for side in ("chosen", "rejected")}}
                for p in pairs]
    return implicit, explicit


def message_rows(pairs=PAIRS):
    """The pairs as conversations that begin with the same system and user messages, and explicitly."""
    prompt = lambda p: [{"role": "system", "content": "Answer."}, {"role": "user", "content": p["prompt"]}]  # noqa: E731
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    implicit = [{side: prompt(p) + answer(p[side]) for side in ("chosen", "rejected")} for p in pairs]
    explicit = [{"prompt": prompt(p), **{side: answer(p[side]) for side in ("chosen", "rejected")}} for p in pairs]
    return implicit, explicit


UNPAIRED = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in PAIRS for side in ("chosen", "rejected")]


def config_for(tmp_path, name, rows, *settings, method="dpo"):
    values = {"method": method, "data.train": f"{{path: {write_pairs(tmp_path, rows, f'{name}.jsonl')}}}",
              "train.batch_size": 8, "optim.lr": 2e-3, "optim.schedule": "constant", "train.micro_batch_tokens": 0}
    return load_config(None, [*tiny_overrides(tmp_path, name, **values), *settings])


def run(tmp_path, name, rows, *settings, method="dpo"):
    config = config_for(tmp_path, name, rows, *settings, method=method)
    train(config)
    return config.run_dir, train_steps(config.run_dir)


def direct(tmp_path, model, rows, *settings, kind="unpaired", name="direct"):
    config = config_for(tmp_path, name, rows, *settings)
    records = validate_records(rows, kind=kind).records
    method, _ = build_pair_method(config, records, model, tiny_tokenizer(), Processes("cpu"))
    return method


# -------------------------------------------------------------------------------------- implicit prompts


@pytest.mark.parametrize("method,rows", [("dpo", hh_rows), ("reward_model", message_rows)])
def test_implicit_prompt_files_train_exactly_as_their_explicit_form(tmp_path, method, rows):
    implicit, explicit = rows()
    _, from_implicit = run(tmp_path, "implicit", implicit, "train.max_steps=2", method=method)
    _, from_explicit = run(tmp_path, "explicit", explicit, "train.max_steps=2", method=method)
    metric = "reward_accuracy" if method == "dpo" else "accuracy"
    for step in (1, 2):
        for key in ("loss", metric, "tokens"):
            assert from_implicit[step][key] == from_explicit[step][key]
    assert from_implicit[2]["loss"] < from_implicit[1]["loss"]


def test_eval_judge_reads_an_implicit_prompt_file(tmp_path):
    implicit, _ = hh_rows(PAIRS[:2])
    data = write_pairs(tmp_path, implicit, "hh.jsonl")
    result = run_judge_eval(JudgeEvalOptions(model="tiny-random", data=str(data), max_new_tokens=2,
                                             out_dir=tmp_path / "judged"))
    assert result["pairs"] == 2
    rows = [json.loads(line) for line in (tmp_path / "judged" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # two pairs, both orders
    bad = write_pairs(tmp_path, [implicit[0], {"chosen": "Blue.", "rejected": "Green."}], "bad.jsonl")
    with pytest.raises(DataError, match="share no beginning") as error:
        run_judge_eval(JudgeEvalOptions(model="tiny-random", data=str(bad)))
    assert error.value.where == f"{bad}:2:prompt"


# ------------------------------------------------------------------------------------------------- KTO


def test_kto_loss_equals_the_loss_of_full_logits_log_probs(tmp_path):
    model = tiny_model()
    method = direct(tmp_path, model, UNPAIRED, "preference.kind=kto", "preference.beta=0.5",
                    "preference.undesirable_weight=1.3", "train.batch_size=16")
    reference_model = tiny_model()
    perturb(model)
    indices = list(range(len(UNPAIRED)))
    work = method.step_batches(model, indices, indices, step=0)
    (batch,) = work.micro_batches
    loss, stats = method.loss(model, batch, work.totals)

    policy, _ = pair_logps(model, method.pairs)  # [N, 2]: own completion, mismatched completion
    reference, _ = pair_logps(reference_model, method.pairs)
    torch.testing.assert_close(method.reference.double(), reference, rtol=1e-5, atol=1e-4)
    z0 = (policy[:, 1] - reference[:, 1]).mean().clamp(min=0)
    assert float(batch.reference_point) == pytest.approx(float(z0), rel=1e-4, abs=1e-5)
    labels = torch.tensor([record["label"] for record in UNPAIRED])
    expected = kto_loss(policy[:, 0], reference[:, 0], labels, z0, beta=0.5, undesirable_weight=1.3)
    assert float(loss.detach()) == pytest.approx(float(expected.losses.mean()), rel=1e-4)
    assert stats["desirable"] == 8 and stats["rows"] == 16
    assert stats["desirable_reward_sum"] == pytest.approx(float(expected.rewards[labels].sum()), rel=1e-3, abs=1e-4)
    # every mismatched row is its prompt with the completion of a record of another prompt
    def split(example):
        start = example.loss_mask.index(1)
        return example.input_ids[:start], example.input_ids[start:]

    own = [split(pair.chosen) for pair in method.pairs]
    for (prompt, _), pair in zip(own, method.pairs, strict=True):
        mismatched_prompt, borrowed = split(pair.rejected)
        assert mismatched_prompt == prompt
        assert any(completion == borrowed and other != prompt for other, completion in own)


def test_kto_micro_batches_give_the_gradient_of_one_big_batch(tmp_path):
    model = tiny_model()
    settings = ("preference.kind=kto", "preference.beta=1.0")
    whole = direct(tmp_path, model, UNPAIRED, *settings, "train.batch_size=16")
    split = direct(tmp_path, model, UNPAIRED, *settings, "train.batch_size=5")
    perturb(model)
    model.double()
    for method in (whole, split):  # lower reference log-probs of the mismatched rows: a positive reference point
        method.reference[:, 1] -= 3.0
    indices = list(range(len(UNPAIRED)))
    works = [m.step_batches(model, indices, indices, step=0) for m in (whole, split)]
    assert [len(work.micro_batches) for work in works] == [1, 4]
    assert float(works[0].micro_batches[0].reference_point) > 0
    assert_same_step_gradients(model, step_gradients(model, whole, works[0]), (split,), works[1:])


def test_kto_learns_the_labels(tmp_path):
    run_dir, steps = run(tmp_path, "kto", UNPAIRED, "preference.kind=kto", "train.batch_size=16",
                         "train.max_steps=6")
    assert steps[1]["loss"] == pytest.approx(0.5, abs=1e-6)  # the policy is its reference: 1 − σ(0)
    assert steps[1]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert steps[6]["loss"] < steps[1]["loss"] - 0.05 and steps[6]["reward_margin"] > 0.5
    assert all(step["kl"] >= 0 for step in steps.values())
    assert torch.load(run_dir / REFERENCE_FILE)["logps"].shape == (16, 2)


def test_unpaired_examples_borrow_another_prompts_completion_and_cut_over_long_ones():
    rows = [{"prompt": "Q", "completion": "a" * 30, "label": True},  # own side truncated
            {"prompt": "Q", "completion": "b", "label": False},  # same prompt: never its partner's donor
            {"prompt": "P" * 40, "completion": "c", "label": True},  # the prompt fills max_length: dropped
            {"prompt": "R", "completion": "d", "label": False}]
    records = validate_records(rows, kind="unpaired").records
    kept = tokenize_unpaired(records, tiny_tokenizer(), max_length=16)
    assert [pair.index for pair in kept.pairs] == [0, 1, 3] and (kept.truncated, kept.dropped) == (1, 1)
    assert all(len(pair.chosen) <= 16 and len(pair.rejected) <= 16 for pair in kept.pairs)
    texts = [tiny_tokenizer().decode(pair.rejected.input_ids) for pair in kept.pairs]
    assert "b" not in texts[0] and "a" not in texts[1]  # Q's two records borrow from P or R, not each other
    dropping = tokenize_unpaired(records, tiny_tokenizer(), max_length=16, overlong="drop")
    assert [pair.index for pair in dropping.pairs] == [1, 3] and dropping.dropped == 2


def test_kto_input_errors(tmp_path):
    with pytest.raises(DataError, match="two records") as error:
        train(config_for(tmp_path, "paired", PAIRS, "preference.kind=kto"))
    assert error.value.where.endswith("paired.jsonl:1:chosen")
    mixed = [UNPAIRED[0], {"prompt": [{"role": "user", "content": "Q"}],
                           "completion": [{"role": "assistant", "content": "A"}], "label": False}]
    with pytest.raises(DataError, match="one form") as error:
        train(config_for(tmp_path, "mixed", mixed, "preference.kind=kto"))
    assert error.value.where.endswith("mixed.jsonl:2")


# ------------------------------------------------------------------------------------------------ ORPO


def test_orpo_loss_is_the_chosen_nll_plus_the_odds_ratio_term(tmp_path):
    model = tiny_model()
    method = direct(tmp_path, model, PAIRS, "preference.kind=orpo", "preference.beta=0.5", kind="preference")
    assert method.reference is None
    perturb(model)
    indices = list(range(len(PAIRS)))
    work = method.step_batches(model, indices, indices, step=0)
    loss, stats = method.loss(model, work.micro_batches[0], work.totals)
    policy, lengths = pair_logps(model, method.pairs)
    odds = dpo_loss(policy[:, 0], policy[:, 1], beta=0.5, kind="orpo", chosen_lengths=lengths[:, 0],
                    rejected_lengths=lengths[:, 1])
    nll = -policy[:, 0].sum() / lengths[:, 0].sum()
    assert float(loss.detach()) == pytest.approx(float(odds.losses.mean() + nll), rel=1e-4)
    assert stats["chosen_nll"] == pytest.approx(float(nll), rel=1e-4)


def test_orpo_learns_the_preference_without_a_reference(tmp_path):
    run_dir, steps = run(tmp_path, "orpo", PAIRS, "preference.kind=orpo", "preference.beta=1.0",
                         "train.max_steps=6")
    assert not (run_dir / REFERENCE_FILE).exists()
    assert steps[6]["loss"] < steps[1]["loss"] - 0.1
    assert steps[6]["reward_margin"] > steps[1]["reward_margin"] and steps[6]["chosen_nll"] < steps[1]["chosen_nll"]


@pytest.mark.parametrize("settings,message", [
    (["preference.kind=orpo", "preference.rpo_alpha=0.5"], "orpo adds its own NLL"),
    (["preference.kind=kto", "preference.rpo_alpha=0.5"], "rpo_alpha"),
    (["preference.kind=orpo", "preference.reference=precompute"], "reference-free"),
    (["preference.kind=kto", "preference.reference=none"], "needs reference"),
    (["preference.kind=sigmoid", "preference.desirable_weight=2"], "KTO's"),
    (["preference.kind=kto", "preference.undesirable_weight=0"], "greater than 0"),
])
def test_inconsistent_kto_and_orpo_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=dpo", *settings])
