"""PPO with a critic (``method: ppo``) on the tiny random model: its configuration, the normalization rule on direct
calls (any split into micro-batches gives one big batch's gradient and value loss), and whole runs on the arithmetic
task with both value models that train with finite losses, checkpoint the critic and resume exactly."""

import math
import shutil

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.trainers import checkpoint as ckpt
from posttrain.trainers.ppo import PPOMethod
from posttrain.trainers.run import train
from tests.helpers import read_jsonl, tiny_overrides, train_steps
from tests.rl_helpers import (
    REWARD_SOURCE,
    VARIED_PROMPTS,
    G,
    direct_method,
    eos_prone_model,
    gradients,
    rewards_override,
)

# -- configuration -------------------------------------------------------------------------------------------


def ppo_config(tmp_path, name, **extra):
    (tmp_path / "r.py").write_text(REWARD_SOURCE)
    values = {"method": "ppo", "rollout.prompts_per_step": 4, "rollout.max_new_tokens": 8, "optim.lr": 1e-2, **extra}
    return load_config(None, [*tiny_overrides(tmp_path, name, **values), rewards_override(tmp_path, "lower")])


def test_ppo_settings_belong_to_method_ppo_and_group_advantages_do_not(tmp_path):
    assert ppo_config(tmp_path, "a").rollout.samples_per_prompt == 1  # PPO's default: one completion per prompt
    with pytest.raises(ConfigError, match=r"method grpo does not use ppo.gamma"):
        ppo_config(tmp_path, "b", method="grpo", **{"ppo.gamma": 0.9})
    with pytest.raises(ConfigError, match=r"method ppo does not use rl.scale.*`rl:`, `ppo:`"):
        ppo_config(tmp_path, "c", **{"rl.scale": "batch"})
    with pytest.raises(ConfigError, match="ppo.vf_coef weighs the value loss"):
        ppo_config(tmp_path, "d", **{"ppo.vf_coef": 0.5})
    with pytest.raises(ConfigError, match="ppo.critic_lr set the separate critic"):
        ppo_config(tmp_path, "e", **{"ppo.value_model": "value_head", "ppo.critic_lr": 1e-4})


def test_a_value_head_on_a_lora_model_is_refused_before_any_step(tmp_path):
    config = ppo_config(tmp_path, "lora", **{"ppo.value_model": "value_head",
                                             "model.lora": "{r: 4, alpha: 8, dropout: 0.0}"})
    with pytest.raises(ConfigError, match="use ppo.value_model=separate with model.lora"):
        train(config)
    assert not (tmp_path / "lora" / "metrics.jsonl").exists()


# -- the normalization rule on direct calls ------------------------------------------------------------------


def ppo_method(tmp_path, *settings):
    """A PPO method over VARIED_PROMPTS (G completions each) and its step-0 work; the value head's random initial
    weights are the same in every call."""
    torch.manual_seed(0)
    model = eos_prone_model()
    settings = ["method=ppo", "rl.beta=0.1", "rl.mask_truncated=true", *settings]
    method, work = direct_method(tmp_path, model, *settings, method_class=PPOMethod)
    return model, method, work


def rows_of(work, name) -> dict[tuple, torch.Tensor]:
    """Each trained row's response-token values of a per-token field, by the row's tokens (passes are ordered by
    length)."""
    rows = {}
    for batch in work.micro_batches:
        for ids, values, mask in zip(batch.input_ids, getattr(batch, name), batch.completion_mask, strict=True):
            if mask.any():
                rows[tuple(ids[: int(mask.nonzero().max()) + 2].tolist())] = values[mask.bool()]
    return rows


def assert_rows_equal(split, whole, name):
    first, second = rows_of(split, name), rows_of(whole, name)
    assert first.keys() == second.keys() and len(first) >= len(VARIED_PROMPTS)
    for key, values in first.items():
        torch.testing.assert_close(values, second[key], rtol=1e-4, atol=1e-6)


def test_value_head_micro_batches_give_the_gradient_of_one_big_batch(tmp_path):
    settings = ["ppo.value_model=value_head", "ppo.vf_coef=0.5"]
    model_split, small, split = ppo_method(tmp_path, *settings, f"train.batch_size={G}")
    model_whole, big, whole = ppo_method(tmp_path, *settings, f"train.batch_size={G * len(VARIED_PROMPTS)}")
    assert len(split.micro_batches) == len(VARIED_PROMPTS) and len(whole.micro_batches) == 1
    assert [g.token_ids for g in small.engine.generations] == [g.token_ids for g in big.engine.generations]
    batch = whole.micro_batches[0]
    assert batch.advantages.shape == batch.completion_mask.shape  # one advantage per token
    on = batch.completion_mask.bool()
    assert float(batch.advantages[on].mean()) == pytest.approx(0.0, abs=1e-5)  # whitened over the step
    for name in ("advantages", "returns", "old_values"):
        assert_rows_equal(split, whole, name)
    loss_split, grads_split = gradients(model_split, small, split)
    loss_whole, grads_whole = gradients(model_whole, big, whole)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    for a, b in zip(grads_split, grads_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert float(model_whole.value_head.weight.grad.abs().max()) > 1e-4  # the value loss reaches the head


def test_separate_critic_micro_batches_give_the_value_loss_and_gradient_of_one_big_batch(tmp_path):
    model_split, small, split = ppo_method(tmp_path, f"train.batch_size={G}")
    model_whole, big, whole = ppo_method(tmp_path, f"train.batch_size={G * len(VARIED_PROMPTS)}")
    assert not hasattr(model_whole, "value_head")
    # the critic's one update of step 0 saw the same loss, whatever the split
    assert split.stats["value_loss"] == pytest.approx(whole.stats["value_loss"], rel=1e-5)
    assert split.stats["value_loss"] > 0 and split.stats["value_tokens"] == whole.stats["value_tokens"]
    assert_rows_equal(split, whole, "returns")
    loss_split, grads_split = gradients(model_split, small, split)
    loss_whole, grads_whole = gradients(model_whole, big, whole)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    for a, b in zip(grads_split, grads_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# -- whole runs ----------------------------------------------------------------------------------------------

CRITIC_METRICS = ("value_loss", "value_clip_fraction", "explained_variance", "returns", "values", "advantages",
                  "kl")


@pytest.mark.parametrize("value_model", ["separate", "value_head"])
def test_a_run_trains_checkpoints_its_critic_and_resumes_exactly(tmp_path, value_model):
    settings = {"ppo.value_model": value_model, "rl.beta": 0.05, "ppo.critic_warmup_steps": 1,
                "rl.updates_per_step": 2, "train.max_steps": 4, "train.save_every": 2, "rollout.prompts_per_step": 2}
    config = ppo_config(tmp_path, value_model, **settings)
    run_dir = train(config).run_dir
    whole = train_steps(run_dir)
    assert sorted(whole) == [1, 2, 3, 4]
    for step, metrics in whole.items():
        for key in ("loss", "policy_loss", "grad_norm", "reward", *CRITIC_METRICS):
            assert math.isfinite(metrics[key]), (step, key)
        assert metrics["value_loss"] > 0
    assert whole[1]["kl"] == pytest.approx(0.0, abs=1e-5)  # the reference is the starting policy (float noise)
    # the second update of a step starts from moved weights: ratios and values leave their clip ranges
    assert max(m["clip_fraction"] for m in whole.values()) > 0
    assert max(m["value_clip_fraction"] for m in whole.values()) > 0
    if value_model == "separate":
        assert whole[1]["grad_norm"] == 0.0 and whole[2]["grad_norm"] > 0  # step 1 trained only the critic
        assert whole[1]["critic_grad_norm"] > 0
        assert (ckpt.list_checkpoints(run_dir)[-1] / "critic" / "optimizer.pt").is_file()
    else:  # step 1's loss is the value loss alone, weighted by vf_coef (the policy's term weighted 0)
        assert whole[1]["loss"] == pytest.approx(config.ppo.vf_coef * whole[1]["value_loss"], rel=1e-5)
        assert whole[2]["loss"] != pytest.approx(config.ppo.vf_coef * whole[2]["value_loss"], rel=1e-3)
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert len(samples) == 4 * 2 and "advantage" not in samples[0]  # PPO's advantages are per token

    shutil.rmtree(ckpt.list_checkpoints(run_dir)[-1])  # as if the run had been killed after step 2's checkpoint
    train(config)
    again = [record for record in read_jsonl(run_dir / "metrics.jsonl") if "loss" in record][-2:]
    assert [record["step"] for record in again] == [3, 4]
    for record in again:
        for key in ("loss", "reward", "grad_norm", "entropy", *CRITIC_METRICS):
            assert record[key] == pytest.approx(whole[record["step"]][key], rel=1e-5, abs=1e-7), (record["step"], key)
