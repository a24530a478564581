"""DPO-family and Bradley–Terry reward-model training on tiny random models.

Direct calls of the methods check the losses against log-probs and scores computed from full logits (one
unpadded forward per side) and the micro-batch split against one big batch; short ``train`` runs check
learning, the reference cache across a resume, the LoRA reference, checkpoints of the classifier, and
bad input.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from posttrain.config import load_config
from posttrain.data import read_records, validate_records
from posttrain.data.preference import tokenize_pairs
from posttrain.errors import ConfigError, DataError
from posttrain.models import disabled_adapter, load_model, tiny_model, tiny_tokenizer
from posttrain.models.reward import load_reward_model
from posttrain.ops import bradley_terry_loss, dpo_loss
from posttrain.trainers import preference as preference_module
from posttrain.trainers.distributed import Processes
from posttrain.trainers.loop import StepTotals
from posttrain.trainers.preference import REFERENCE_FILE, build_pair_method
from posttrain.trainers.run import train
from tests.helpers import assert_same_step_gradients, step_gradients, tiny_overrides, train_steps

# a learnable preference: chosen answers repeat "yes", rejected ones "no!"; lengths vary within and across pairs
PAIRS = [{"prompt": f"Q{i}: pick one", "chosen": "yes" * (1 + i % 3), "rejected": "no!" * (1 + (i + 1) % 4),
          "margin": 0.25 * i} for i in range(8)]


def write_pairs(tmp_path, rows=PAIRS, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def overrides(tmp_path, name, *settings, method="dpo", rows=PAIRS):
    values = {"method": method, "data.train": f"{{path: {write_pairs(tmp_path, rows)}}}", "train.batch_size": 8,
              "optim.lr": 2e-3, "optim.schedule": "constant", "train.micro_batch_tokens": 0}
    return [*tiny_overrides(tmp_path, name, **values), *settings]


def run(tmp_path, name, *settings, method="dpo"):
    config = load_config(None, overrides(tmp_path, name, *settings, method=method))
    train(config)
    return config.run_dir, train_steps(config.run_dir)


def direct_method(tmp_path, model, *settings, method="dpo", name="direct"):
    config = load_config(None, overrides(tmp_path, name, *settings, method=method))
    records = validate_records(PAIRS, kind="preference").records
    built, _ = build_pair_method(config, records, model, tiny_tokenizer(), Processes("cpu"))
    return built


def perturb(model, seed=1, scale=0.05):
    """Move every weight a little, so the policy differs from the reference it was built with."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def full_logits_logp(model, example):
    """Σ log p(completion tokens) and the completion length, from one unpadded forward's full logits."""
    ids = torch.tensor([example.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    token_logps = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    mask = torch.tensor(example.loss_mask[1:], dtype=torch.float64)
    return float((token_logps * mask).sum()), float(mask.sum())


def pair_logps(model, pairs):
    """``[N, 2]`` summed log-probs and ``[N, 2]`` lengths of (chosen, rejected) from full logits."""
    values = [[full_logits_logp(model, side) for side in (pair.chosen, pair.rejected)] for pair in pairs]
    table = torch.tensor(values, dtype=torch.float64)
    return table[..., 0], table[..., 1]


# ------------------------------------------------------------------------------------------ direct calls


@pytest.mark.parametrize("settings", [
    ("preference.kind=sigmoid",),
    ("preference.kind=sigmoid", "preference.rpo_alpha=0.5"),
    ("preference.kind=robust", "preference.label_smoothing=0.2"),
    ("preference.kind=ipo",),
    ("preference.kind=hinge", "preference.beta=0.5"),
    ("preference.kind=simpo", "preference.beta=2.0", "preference.gamma=0.3"),
])
def test_dpo_loss_equals_the_loss_of_full_logits_log_probs(tmp_path, settings):
    model = tiny_model()
    method = direct_method(tmp_path, model, *settings)
    pref = method.preference
    reference_model = tiny_model()
    perturb(model)
    indices = list(range(len(PAIRS)))
    work = method.step_batches(model, indices, indices, step=0)
    (batch,) = work.micro_batches
    loss, stats = method.loss(model, batch, work.totals)

    policy, lengths = pair_logps(model, method.pairs)
    chosen, rejected = policy[:, 0], policy[:, 1]
    reference = (None, None)
    if pref.kind != "simpo":
        ref, _ = pair_logps(reference_model, method.pairs)
        torch.testing.assert_close(method.reference.double(), ref, rtol=1e-5, atol=1e-4)  # the starting weights
        reference = (ref[:, 0], ref[:, 1])
    expected = dpo_loss(chosen, rejected, *reference, beta=pref.beta, kind=pref.kind,
                        label_smoothing=pref.label_smoothing, gamma=pref.gamma, chosen_lengths=lengths[:, 0],
                        rejected_lengths=lengths[:, 1])
    manual = expected.losses.mean()
    if pref.kind == "sigmoid":  # DPO written out: −log σ(β·((π_c − ref_c) − (π_r − ref_r)))
        by_hand = -F.logsigmoid(pref.beta * ((chosen - reference[0]) - (rejected - reference[1]))).mean()
        assert float(manual) == pytest.approx(float(by_hand), rel=1e-9)
    if pref.rpo_alpha:
        manual = manual + pref.rpo_alpha * (-chosen.sum() / lengths[:, 0].sum())
    assert float(loss.detach()) == pytest.approx(float(manual), rel=1e-4, abs=1e-6)
    assert stats["chosen_logp_sum"] == pytest.approx(float(chosen.sum()), rel=1e-4)
    assert stats["rejected_logp_sum"] == pytest.approx(float(rejected.sum()), rel=1e-4)
    margins = expected.chosen_rewards - expected.rejected_rewards
    assert stats["correct"] == float((margins > 0).sum())
    assert stats["margin_sum"] == pytest.approx(float(margins.sum()), rel=1e-3, abs=1e-4)
    assert (method.reference is None) == (pref.kind == "simpo")


@pytest.mark.parametrize("method_name,settings", [
    ("dpo", ("preference.kind=sigmoid", "preference.rpo_alpha=0.7")),
    ("dpo", ("preference.kind=ipo",)),
    ("dpo", ("preference.kind=simpo", "preference.gamma=0.5")),
    ("reward_model", ("reward_model.margin_field=margin", "reward_model.center_coefficient=0.1")),
])
def test_micro_batches_and_token_budgets_give_the_gradient_of_one_big_batch(tmp_path, method_name, settings):
    model = load_reward_model("tiny-random", pad_token_id=3) if method_name == "reward_model" else tiny_model()
    whole = direct_method(tmp_path, model, *settings, method=method_name)
    split = direct_method(tmp_path, model, *settings, "train.batch_size=3", method=method_name)
    budget = direct_method(tmp_path, model, *settings, "train.micro_batch_tokens=120", method=method_name)
    perturb(model)
    model.double()  # float64: what is left of any difference is the split, not rounding
    indices = list(range(len(PAIRS)))
    works = [m.step_batches(model, indices, indices, step=0) for m in (whole, split, budget)]
    assert [len(work.micro_batches) for work in works[:2]] == [1, 3] and len(works[2].micro_batches) > 3
    for batch in works[2].micro_batches:  # each pass: 2n rows × longest within the budget (or a single pair)
        rows, width = batch.inputs["input_ids"].shape
        assert rows * width <= 120 or rows == 2
    assert_same_step_gradients(model, step_gradients(model, whole, works[0]), (split, budget), works[1:])


def test_reward_model_loss_is_bradley_terry_on_the_scores_of_its_head(tmp_path):
    model = load_reward_model("tiny-random", pad_token_id=3)
    method = direct_method(tmp_path, model, "reward_model.margin_field=margin",
                           "reward_model.center_coefficient=0.05", method="reward_model")
    indices = [5, 0, 3, 7]
    loss, stats = method.loss(model, method.collate(indices), StepTotals(pairs=len(indices)))
    # the classifier's own pooling (last non-pad token), one unpadded row at a time
    with torch.no_grad():
        scores = torch.tensor([[float(model(input_ids=torch.tensor([side.input_ids])).logits[0, 0])
                                for side in (method.pairs[i].chosen, method.pairs[i].rejected)] for i in indices])
    margins = torch.tensor([PAIRS[i]["margin"] for i in indices])
    expected = bradley_terry_loss(scores[:, 0], scores[:, 1], margins, center_coefficient=0.05)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert stats["correct"] == float((scores[:, 0] > scores[:, 1]).sum())
    assert stats["chosen_reward_sum"] == pytest.approx(float(scores[:, 0].sum()), rel=1e-4, abs=1e-5)
    assert float(scores.std()) > 1e-4  # a head that scores everything alike would make this check empty


def test_reference_of_a_lora_policy_is_the_model_with_its_adapter_disabled(tmp_path):
    lora = "model.lora={r: 4, alpha: 8, dropout: 0.0}"
    run_dir, steps = run(tmp_path, "lora", lora, "train.max_steps=3", "optim.lr=1e-2")
    assert steps[1]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # fresh adapters: policy = reference
    trained = load_model(run_dir / "checkpoints" / "step-3" / "model", device="cpu")
    pairs = tokenize_pairs(read_records(run_dir.parent / "pairs.jsonl", kind="preference"), tiny_tokenizer(),
                           320).pairs
    cached = torch.load(run_dir / REFERENCE_FILE)["logps"].double()
    with disabled_adapter(trained):
        base, _ = pair_logps(trained, pairs)
    adapted, _ = pair_logps(trained, pairs)
    torch.testing.assert_close(cached, base, rtol=1e-5, atol=1e-4)
    assert float((adapted - base).abs().max()) > 1e-2  # the adapter trained: the policy left the reference


# ------------------------------------------------------------------------------------------ training runs


@pytest.mark.parametrize("kind", ["sigmoid", "simpo"])
def test_dpo_learns_the_preference_and_resumes_with_the_cached_reference(tmp_path, monkeypatch, kind):
    settings = (f"preference.kind={kind}", "train.save_every=4")
    straight_dir, straight = run(tmp_path, "straight", *settings, "train.max_steps=8")
    losses = [straight[step]["loss"] for step in range(1, 9)]
    assert sum(losses[-2:]) / 2 < losses[0] - 0.1
    assert straight[8]["reward_accuracy"] >= 0.75 > straight[1]["reward_accuracy"]
    assert straight[8]["reward_margin"] > straight[1]["reward_margin"] + 0.1
    assert straight[8]["tokens_per_s"] > 0
    if kind == "simpo":
        assert not (straight_dir / REFERENCE_FILE).exists()
        return
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # step 1: the policy is its own reference
    assert straight[1]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    cached = torch.load(straight_dir / REFERENCE_FILE)["logps"]
    pairs = tokenize_pairs(validate_records(PAIRS, kind="preference").records, tiny_tokenizer(), 320).pairs
    torch.testing.assert_close(cached.double(), pair_logps(tiny_model(), pairs)[0], rtol=1e-5, atol=1e-4)

    first_dir, _ = run(tmp_path, "resumed", *settings, "train.max_steps=4")
    written = (first_dir / REFERENCE_FILE).stat().st_mtime_ns

    def no_second_computation(self, model):
        raise AssertionError("the reference log-probs were computed again")

    monkeypatch.setattr(preference_module.PreferenceMethod, "compute_reference", no_second_computation)
    _, resumed = run(tmp_path, "resumed", *settings, "train.max_steps=8")
    assert (first_dir / REFERENCE_FILE).stat().st_mtime_ns == written
    for step in (5, 8):
        for key in ("loss", "reward_accuracy", "reward_margin", "chosen_logp"):
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_reward_model_learns_and_its_checkpoint_resumes(tmp_path, lora):
    settings = ("reward_model.margin_field=margin", "train.save_every=3",
                *(["model.lora={r: 4, alpha: 8, dropout: 0.0}", "optim.lr=1e-2"] if lora else []))
    straight_dir, straight = run(tmp_path, "rm", *settings, "train.max_steps=6", method="reward_model")
    assert straight[6]["accuracy"] == 1.0 and straight[1]["accuracy"] < 1.0
    assert straight[6]["loss"] < straight[1]["loss"] - 0.1 and straight[6]["margin"] > straight[1]["margin"]
    model_dir = straight_dir / "checkpoints" / "step-6" / "model"
    if lora:  # the adapter, and the score head saved whole
        adapter = json.loads((model_dir / "adapter_config.json").read_text())
        assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    else:
        assert json.loads((model_dir / "config.json").read_text())["architectures"] == [
            "LlamaForSequenceClassification"]
    pairs = tokenize_pairs(validate_records(PAIRS, kind="preference").records, tiny_tokenizer(), 320).pairs
    for name, expected in ((str(model_dir), 1.0), ("tiny-random", straight[1]["accuracy"])):
        scorer = load_reward_model(name, device="cpu", pad_token_id=3)
        with torch.no_grad():  # the saved model scores as it trained; the starting one as at step 1
            rewards = [[float(scorer(input_ids=torch.tensor([side.input_ids])).logits[0, 0])
                        for side in (pair.chosen, pair.rejected)] for pair in pairs]
        assert sum(chosen > rejected for chosen, rejected in rewards) / len(pairs) == expected

    run(tmp_path, "rm_resumed", *settings, "train.max_steps=3", method="reward_model")
    _, resumed = run(tmp_path, "rm_resumed", *settings, "train.max_steps=6", method="reward_model")
    for step in (4, 6):
        for key in ("loss", "accuracy", "margin", "chosen_reward"):
            assert resumed[step][key] == pytest.approx(straight[step][key], rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("row,field,message", [
    ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "rejected", "identical"),
    ({"prompt": "Q", "chosen": "  ", "rejected": "no"}, "chosen", "empty"),
    ({"prompt": "Q", "chosen": "yes", "rejected": ""}, "rejected", "empty"),
    ({"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "a"}]}, "rejected", "identical"),
    ({"prompt": "Q", "chosen": [{"role": "assistant", "content": ""}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "chosen[0].content", "empty"),
])
def test_bad_pairs_are_data_errors_naming_file_and_line(tmp_path, row, field, message):
    config = load_config(None, overrides(tmp_path, "bad", rows=[PAIRS[0], row]))
    with pytest.raises(DataError) as error:
        train(config)
    assert error.value.where == f"{tmp_path / 'pairs.jsonl'}:2:{field}"
    assert message in error.value.what


def test_invalid_pairs_are_skipped_and_counted_with_skip_invalid(tmp_path):
    rows = [PAIRS[0], {"prompt": "Q", "chosen": "same", "rejected": "same"}, PAIRS[1]]
    records = read_records(write_pairs(tmp_path, rows), kind="preference", skip_invalid=True)
    assert (len(records), records.skipped) == (2, 1) and "pairs.jsonl:2:rejected" in records.problems[0]


def test_a_missing_margin_field_is_a_data_error(tmp_path):
    rows = [PAIRS[0], {key: value for key, value in PAIRS[1].items() if key != "margin"}]
    config = load_config(None, overrides(tmp_path, "margin", "reward_model.margin_field=margin", rows=rows,
                                         method="reward_model"))
    with pytest.raises(DataError, match="not a number") as error:
        train(config)
    assert error.value.where == f"{tmp_path / 'pairs.jsonl'}:2:margin"


def test_over_long_pairs_are_truncated_or_dropped_and_counted():
    rows = [{"prompt": "Q", "chosen": "a" * 30, "rejected": "b" * 5},  # truncated
            {"prompt": "P" * 40, "chosen": "a", "rejected": "b"},  # the prompt fills max_length
            {"prompt": "Q", "chosen": "x" * 20 + "a", "rejected": "x" * 20 + "b"}]  # same after truncation
    records = validate_records(rows, kind="preference").records
    kept = tokenize_pairs(records, tiny_tokenizer(), max_length=16)
    assert (len(kept), kept.truncated, kept.dropped) == (1, 2, 2)
    assert len(kept.pairs[0].chosen) == 16 and kept.pairs[0].index == 0
    chosen, rejected = kept.pairs[0].chosen, kept.pairs[0].rejected
    assert chosen.loss_mask == [0] + [1] * 15  # the prompt "Q" is kept, the completion cut from the right
    assert rejected.input_ids[-1] == tiny_tokenizer().eos_token_id and len(rejected) == 7  # short side whole
    dropping = tokenize_pairs(records, tiny_tokenizer(), max_length=16, overlong="drop")
    assert (len(dropping), dropping.truncated, dropping.dropped) == (0, 0, 3)


@pytest.mark.parametrize("settings,message", [
    (["preference.kind=simpo", "preference.reference=precompute"], "reference-free"),
    (["preference.reference=none"], "needs reference"),
    (["preference.kind=hinge", "preference.label_smoothing=0.1"], "no label smoothing"),
    (["preference.kind=ipo", "preference.gamma=0.5"], "SimPO"),
])
def test_inconsistent_preference_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["method=dpo", *settings])
    assert load_config(None, ["method=dpo", "preference.kind=simpo"]).preference.reference == "none"


@pytest.mark.parametrize("setting,field", [("data.packing=true", "data.packing"),
                                           ("data.completion_only=false", "data.completion_only")])
def test_packing_and_whole_sequence_losses_are_refused_for_pairs(tmp_path, setting, field):
    with pytest.raises(ConfigError, match="right-padded pairs") as error:
        direct_method(tmp_path, tiny_model(), setting)
    assert error.value.where == field
