"""The normalization rule: a loss is a sum over a micro-batch divided by the step's global total, so any split
of a step's work into micro-batches gives the gradient of one big batch (DPO, reward models, regression, GRPO
and distillation have their own split tests next to their methods; SFT's is here)."""

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.ops import POLICY_LOSS_KINDS, POLICY_LOSS_TOTALS, policy_loss, policy_loss_sum
from posttrain.trainers.distributed import Processes
from posttrain.trainers.loop import StepTotals
from posttrain.trainers.run import build_method
from tests.helpers import assert_same_step_gradients, step_gradients, tiny_config


@pytest.mark.parametrize("loss", ["nll", "dft"])
def test_sft_micro_batches_and_token_budgets_give_the_gradient_of_one_big_batch(tmp_path, loss):
    model = tiny_model().double()  # float64: what is left of any difference is the split, not rounding
    tokenizer = tiny_tokenizer()
    settings = {"sft.loss": loss, "train.batch_size": 8, "data.train": "{task: arithmetic, n: 8, seed: 0}"}
    methods = [build_method(tiny_config(tmp_path, name, **{**settings, **extra}), model, tokenizer, Processes("cpu"))[0]
               for name, extra in (("whole", {"train.micro_batch_tokens": 0}),
                                   ("split", {"train.batch_size": 3, "train.grad_accum": 3,
                                              "train.micro_batch_tokens": 0}),
                                   ("budget", {"train.micro_batch_tokens": 100}))]
    indices = list(range(8))
    works = [method.step_batches(model, indices, indices, step=0) for method in methods]
    assert [len(work.micro_batches) for work in works] == [1, 3, len(works[2].micro_batches)]
    assert len(works[2].micro_batches) > 2
    assert works[0].totals == works[1].totals == works[2].totals
    assert_same_step_gradients(model, step_gradients(model, methods[0], works[0]), methods[1:], works[1:])


@pytest.mark.parametrize("kind", POLICY_LOSS_KINDS)
def test_policy_loss_is_its_sum_divided_by_the_named_total(kind):
    torch.manual_seed(0)
    logprobs = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    old = (logprobs + 0.1 * torch.randn(4, 5, dtype=torch.float64)).detach()
    advantages, mask = torch.randn(4, dtype=torch.float64), (torch.rand(4, 5) > 0.3).double()
    whole = policy_loss(logprobs, old, advantages, mask, kind=kind).loss
    totals = StepTotals(rows=4, tokens=float(mask.sum()))
    parts = sum(policy_loss_sum(logprobs[rows], old[rows], advantages[rows], mask[rows], kind=kind,
                                max_completion_length=5).loss
                for rows in (slice(0, 1), slice(1, 4))) / totals.of(POLICY_LOSS_TOTALS[kind])
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-12)


def test_totals_of_an_empty_step_divide_by_one():
    assert StepTotals().of("tokens") == 1.0 and StepTotals(rows=3).of("rows") == 3.0


@pytest.mark.parametrize(("method", "setting", "named"), [
    ("sft", "rl.loss=grpo", "rl.loss"),
    ("grpo", "sft.loss=dft", "sft.loss"),
    ("dpo", "distill.teacher_temperature=2", "distill.teacher_temperature"),
    ("grpo", "train.grad_accum=2", "train.grad_accum"),
    ("sft", "rollout.temperature=0.5", "rollout.temperature"),
    ("reward_model", "preference.beta=0.2", "preference.beta"),
])
def test_a_setting_the_method_does_not_use_is_an_error_naming_it(method, setting, named):
    with pytest.raises(ConfigError, match=f"method {method} does not use {named}"):
        load_config(None, [f"method={method}", setting])


@pytest.mark.parametrize(("old", "new"), [
    ("rl.group_size=4", "rollout.samples_per_prompt"), ("distill.temperature=0.7", "rollout.temperature"),
    ("rl.rollout_dtype=bfloat16", "rollout.dtype"), ("distill.micro_batch_tokens=30", "train.micro_batch_tokens"),
])
def test_a_key_of_an_earlier_version_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=f"{old.split('=')[0]} is now {new}"):
        load_config(None, ["method=grpo", old])


@pytest.mark.parametrize(("method", "samples"), [("sft", None), ("grpo", 8), ("distill", 1)])
def test_samples_per_prompt_defaults_to_the_methods_own(method, samples):
    config = load_config(None, [f"method={method}"])
    assert (config.rollout.samples_per_prompt, config.train.micro_batch_tokens) == (samples, 600)
    assert load_config(None, [f"method={method}", "train.micro_batch_tokens=100"]).train.micro_batch_tokens == 100


def test_the_methods_own_settings_and_defaults_of_others_are_accepted():
    assert load_config(None, ["method=grpo", "rl.loss=grpo", "sft.loss=nll", "train.batch_size=4"]).rl.loss == "grpo"
    assert load_config(None, ["method=sft", "train.grad_accum=4"]).train.grad_accum == 4


def test_a_reward_model_with_a_math_evaluation_is_refused_at_load():
    with pytest.raises(ConfigError, match="eval.kind=none"):
        load_config(None, ["method=reward_model", "eval.kind=math"])
    assert load_config(None, ["method=reward_model", "eval.kind=none"]).eval.kind == "none"
