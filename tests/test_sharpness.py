"""Sharpness diagnostics (TS-OPSD reheating): T̂ fit, per-position stats, two-model stats, end to end, CLI."""

import copy
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.errors import ConfigError, ModelError
from posttrain.evals.sharpness import (
    SharpnessOptions,
    fit_temperature,
    position_stats,
    run_sharpness_eval,
    sharpness_stats,
)
from posttrain.models import save_model, tiny_model, tiny_tokenizer
from posttrain.ops import causal_lm_parts

RESULT_KEYS = {
    "model", "reference", "data", "contexts", "num_prompts", "num_sequences", "num_positions",
    "entropy_model", "entropy_reference", "max_prob_model", "max_prob_reference",
    "top1_overlap", "top5_overlap", "top10_overlap",
    "temperature_median", "temperature_p25", "temperature_p75", "temperature_mean",
    "temperature_positions", "temperature_skipped", "layer_cosine", "layer_norm_ratio",
    "model_pass@1", "model_pass@2", "reference_pass@1", "reference_pass@2", "model_accuracy", "out",
}


def random_logits(rows=64, vocab=300, scale=3.0, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def kl(reference, model, temperature):
    logp = torch.log_softmax(reference.double() / temperature, -1)
    return (logp.exp() * (logp - torch.log_softmax(model.double(), -1))).sum(-1)


def reheated(model):
    """A copy of ``model`` whose final norm weight is halved: every logit becomes exactly z / 2."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.model.norm.weight.mul_(0.5)
    return copied


# ---------------------------------------------------------------------------------------- fit_temperature


@pytest.mark.parametrize("temperature", [2.0, 0.5, 1.0, 3.7])
def test_fit_temperature_recovers_a_pure_rescaling(temperature):
    z = random_logits()
    fitted = fit_temperature(z, z / temperature + 1.5)  # a shift does not change the distribution
    assert fitted.shape == (64,) and fitted.dtype == torch.float32
    torch.testing.assert_close(fitted, torch.full((64,), temperature), rtol=1e-3, atol=0)


def test_fit_temperature_is_the_argmin_of_the_kl_for_unrelated_logits():
    reference, model = random_logits(seed=1), random_logits(scale=1.0, seed=2)
    fitted = fit_temperature(reference, model, chunk_size=7).double()
    torch.testing.assert_close(fitted.float(), fit_temperature(reference, model))  # chunking changes nothing
    dense = torch.exp(torch.linspace(math.log(0.25), math.log(8.0), 2001, dtype=torch.float64))
    curve = torch.stack([kl(reference, model, t) for t in dense], dim=1)
    brute = dense[curve.argmin(1)]
    assert (kl(reference, model, fitted[:, None]) <= curve.min(1).values + 1e-9).all()
    torch.testing.assert_close(fitted, brute, rtol=3e-3, atol=0)


def test_fit_temperature_skips_one_hot_and_flat_rows_and_clips_to_the_bounds():
    z = random_logits(rows=4)
    z[1] = 0.0
    z[1, 5] = 40.0  # max-probability 1 - 299·e^-40: numerically one-hot
    z[2] = 1.0  # flat: every temperature gives the uniform distribution
    fitted = fit_temperature(z, z / 2)
    assert fitted[1].isnan() and fitted[2].isnan()
    assert fitted[0].item() == pytest.approx(2.0, rel=1e-3) and fitted[3].item() == pytest.approx(2.0, rel=1e-3)
    assert fit_temperature(z[[0]], z[[0]] / 20).item() == pytest.approx(8.0, rel=1e-6)  # beyond high
    assert fit_temperature(z[[0]], z[[0]] * 10).item() == pytest.approx(0.25, rel=1e-6)  # below low
    with pytest.raises(ValueError, match="one shape"):
        fit_temperature(z, z[:, :10])


# ---------------------------------------------------------------------------------------- position_stats


def test_position_stats_of_identical_logits():
    z = random_logits()
    stats = position_stats(z, z.clone())
    for k in (1, 5, 10):
        assert torch.equal(stats[f"top{k}_overlap"], torch.ones(64))
    torch.testing.assert_close(stats["entropy_model"], stats["entropy_reference"])
    torch.testing.assert_close(stats["max_prob_model"], stats["max_prob_reference"])
    torch.testing.assert_close(stats["temperature"], torch.ones(64), rtol=1e-4, atol=0)
    manual = -(torch.softmax(z.double(), -1) * torch.log_softmax(z.double(), -1)).sum(-1)
    torch.testing.assert_close(stats["entropy_reference"].double(), manual, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["max_prob_reference"], torch.softmax(z, -1).amax(-1))


def test_position_stats_of_hotter_logits():
    z = random_logits()
    stats = position_stats(z / 2, z)
    for k in (1, 5, 10):
        assert torch.equal(stats[f"top{k}_overlap"], torch.ones(64))  # exactly: the ranking is unchanged
    assert (stats["entropy_model"] > stats["entropy_reference"]).all()
    assert (stats["max_prob_model"] < stats["max_prob_reference"]).all()
    torch.testing.assert_close(stats["temperature"], torch.full((64,), 2.0), rtol=1e-3, atol=0)


def test_position_stats_of_a_permuted_vocabulary():
    z = random_logits()
    permuted = z[:, torch.randperm(300, generator=torch.Generator().manual_seed(3))]
    stats = position_stats(permuted, z)
    assert stats["top1_overlap"].mean() < 1 and stats["top10_overlap"].mean() < 1
    # entropy and sharpness do not see which token is which
    torch.testing.assert_close(stats["entropy_model"], stats["entropy_reference"])
    torch.testing.assert_close(stats["max_prob_model"], stats["max_prob_reference"])
    assert set(stats) == {
        "entropy_model", "entropy_reference", "max_prob_model", "max_prob_reference",
        "top1_overlap", "top5_overlap", "top10_overlap", "temperature",
    }


# --------------------------------------------------------------------------------------- sharpness_stats


def batch():
    """Two right-padded sequences: prompt 4 + completion 6 tokens, and prompt 3 + completion 3 tokens."""
    ids = torch.tensor([[5, 9, 40, 41, 60, 61, 62, 63, 64, 65], [7, 8, 9, 70, 71, 72, 3, 3, 3, 3]])
    attention = torch.tensor([[1] * 10, [1] * 6 + [0] * 4])
    targets = torch.tensor([[0] * 4 + [1] * 6, [0] * 3 + [1] * 3 + [0] * 4])
    return ids, attention, targets


@pytest.mark.parametrize("tied", [False, True])
def test_sharpness_stats_of_a_halved_final_norm(tied):
    reference = tiny_model(tie_word_embeddings=tied)
    model = reheated(reference)
    ids, attention, targets = batch()
    body = causal_lm_parts(reference)[0]
    with torch.no_grad():
        out = body(input_ids=ids, attention_mask=attention, output_hidden_states=True)
    # HF Llama: hidden_states = embeddings, layer 1, ..., and the last entry is taken AFTER the final norm
    assert len(out.hidden_states) == reference.config.num_hidden_layers + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)

    stats = sharpness_stats(model, reference, ids, targets, attention_mask=attention, chunk_size=4)
    assert stats["temperature"].shape == (9,)  # positions 3..8 of row 0 and 2..4 of row 1 predict completions
    assert stats["layer_cosine"].shape == (9, 3)
    # embeddings and layer 1 are untouched; the post-norm last entry is scaled by 0.5 (cosine still 1):
    # the norm ratio shows the change, the cosine cannot (a rescaling keeps directions; tied or not alike)
    torch.testing.assert_close(stats["layer_cosine"], torch.ones(9, 3))
    torch.testing.assert_close(stats["layer_norm_ratio"][:, :-1], torch.ones(9, 2))
    torch.testing.assert_close(stats["layer_norm_ratio"][:, -1], torch.full((9,), 0.5))
    assert (stats["entropy_model"] > stats["entropy_reference"]).all()
    assert (stats["max_prob_model"] < stats["max_prob_reference"]).all()
    for k in (1, 5, 10):
        assert torch.equal(stats[f"top{k}_overlap"], torch.ones(9))
    torch.testing.assert_close(stats["temperature"], torch.full((9,), 2.0), rtol=1e-3, atol=0)

    # the same values as full logits of each sequence alone, at the positions that predict completions
    with torch.no_grad():
        first = reference(ids[:1]).logits[0, 3:9]
        second = reference(ids[1:2, :6]).logits[0, 2:5]
    expected = torch.cat([first, second])
    torch.testing.assert_close(
        stats["max_prob_reference"], torch.softmax(expected, -1).amax(-1), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        stats["entropy_reference"], position_stats(expected, expected)["entropy_reference"], rtol=1e-4, atol=1e-5
    )


def test_sharpness_stats_against_itself_and_the_training_flag():
    reference = tiny_model()
    reference.train()
    ids, attention, targets = batch()
    stats = sharpness_stats(reference, reference, ids, targets, attention_mask=attention)
    assert reference.training
    torch.testing.assert_close(stats["temperature"], torch.ones(9), rtol=1e-3, atol=0)
    torch.testing.assert_close(stats["entropy_model"], stats["entropy_reference"])


def test_a_vocabulary_mismatch_is_a_model_error(saved, tmp_path):
    ids, attention, targets = batch()
    with pytest.raises(ModelError, match="output vocabularies have 300 and 260 tokens") as raised:
        sharpness_stats(tiny_model(vocab_size=300), tiny_model(), ids, targets, attention_mask=attention)
    assert raised.value.where and raised.value.fix
    bigger = save_model(tiny_model(vocab_size=300), tiny_tokenizer(), tmp_path / "bigger")
    with pytest.raises(ModelError, match="vocabulary"):
        run_sharpness_eval(SharpnessOptions(model=str(bigger), reference=str(saved["reference"]),
                                            data=str(saved["data"]), out_dir=tmp_path / "no"))
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharpness")
    reference = tiny_model()
    paths = {
        "reference": save_model(reference, tiny_tokenizer(), root / "collapsed"),
        "model": save_model(reheated(reference), tiny_tokenizer(), root / "reheated"),
        "data": root / "prompts.jsonl",
    }
    records = [
        {"prompt": [{"role": "user", "content": "2+2?"}], "reference": "4"},
        {"prompt": "1+1=", "reference": "2"},
        {"prompt": [{"role": "user", "content": "3+4?"}], "reference": "7"},
    ]
    paths["data"].write_text("".join(json.dumps(record) + "\n" for record in records))
    return paths


def test_run_sharpness_eval_writes_sharpness_json(saved):
    result = run_sharpness_eval(SharpnessOptions(
        model=str(saved["model"]), reference=str(saved["reference"]), data=str(saved["data"]), n=3, samples=2,
        max_new_tokens=6, k=2,
    ))
    written = saved["model"] / "eval" / "sharpness" / "sharpness.json"  # default: next to the model
    assert json.loads(written.read_text()) == result and result["out"] == str(written)
    assert RESULT_KEYS <= set(result)
    assert result["num_prompts"] == 3 and result["num_sequences"] == 6 and result["contexts"] == "reference"
    assert result["num_positions"] == result["temperature_positions"] + result["temperature_skipped"] > 0
    assert result["temperature_skipped"] == 0
    assert result["temperature_median"] == pytest.approx(2.0, rel=1e-3)
    assert result["temperature_p25"] <= result["temperature_median"] <= result["temperature_p75"]
    assert result["entropy_model"] > result["entropy_reference"]
    assert result["max_prob_model"] < result["max_prob_reference"]
    assert result["top1_overlap"] == result["top5_overlap"] == result["top10_overlap"] == 1.0
    assert result["layer_cosine"] == pytest.approx([1.0] * 3, abs=1e-5)
    assert result["layer_norm_ratio"] == pytest.approx([1.0, 1.0, 0.5], abs=1e-5)
    for role in ("model", "reference"):
        assert 0.0 <= result[f"{role}_pass@1"] <= result[f"{role}_pass@2"] <= 1.0
        assert result[f"{role}_num_samples"] == 6


def test_cli_eval_sharpness(saved, tmp_path):
    runner = CliRunner()
    options = [
        "eval", "sharpness", "--model", str(saved["model"]), "--reference", str(saved["reference"]),
        "--data", str(saved["data"]), "--n", "2", "--k", "2", "--max-new-tokens", "5",
    ]
    done = runner.invoke(app, [*options, "--contexts", "model", "--out", str(tmp_path / "ev"), "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert RESULT_KEYS <= set(result) and result["contexts"] == "model" and result["num_sequences"] == 2
    assert json.loads((tmp_path / "ev" / "sharpness.json").read_text()) == result
    assert result["temperature_median"] == pytest.approx(2.0, rel=1e-3)

    table = runner.invoke(app, [*options, "--out", str(tmp_path / "table")])
    assert table.exit_code == 0, table.output
    assert "temperature_median: 2" in table.stdout and "layer_cosine: 1.0000 1.0000 1.0000" in table.stdout

    wrong = runner.invoke(app, [*options, "--contexts", "both", "--out", str(tmp_path / "x")])
    assert isinstance(wrong.exception, ConfigError) and "unknown contexts 'both'" in str(wrong.exception)
