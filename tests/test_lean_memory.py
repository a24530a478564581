"""``train.memory: lean`` and the AdamW update inside backward (``optim.update_in_backward``): the same update as
after backward, the non-finite rules, the resolved config and its refusals, and lean runs that learn and resume."""

import math

import pytest
import torch
import yaml

from posttrain.config import OptimConfig, dump_config, load_config
from posttrain.errors import ConfigError
from posttrain.models.tiny import tiny_model
from posttrain.trainers import resume
from posttrain.trainers.optimizer import AdamWBF16State, AdamWInBackward, build_optimizer
from posttrain.trainers.run import train
from tests.helpers import tiny_config, train_steps
from tests.test_training import assert_same_steps

SETTINGS = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}


def micro_batches(count: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 260, (2, 12), generator=generator) for _ in range(count)]


def lm_loss(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=ids).loss


def after_backward(model, optimizer, updates: list[list[torch.Tensor]]) -> None:
    for batches in updates:
        for ids in batches:
            (lm_loss(model, ids) / len(batches)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def in_backward(model, optimizer: AdamWInBackward, updates: list[list[torch.Tensor]]) -> list[tuple[float, bool]]:
    results = []
    for batches in updates:
        for index, ids in enumerate(batches):
            loss = lm_loss(model, ids) / len(batches)
            if index == len(batches) - 1:
                optimizer.arm(bool(torch.isfinite(loss)))
            loss.backward()
        results.append(optimizer.finish())
        optimizer.zero_grad(set_to_none=True)
    return results


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("count", [1, 3])
def test_the_update_in_backward_equals_the_update_after_it(state_dtype, count):
    """Three updates of a tiny LM (tied embeddings: one parameter used twice) over ``count`` micro-batches each."""
    updates = [micro_batches(count, seed) for seed in range(3)]
    reference, ours = tiny_model(tie_word_embeddings=True), tiny_model(tie_word_embeddings=True)
    standard = (torch.optim.AdamW(reference.parameters(), **SETTINGS) if state_dtype == "float32"
                else AdamWBF16State(reference.parameters(), seed=4, **SETTINGS))
    after_backward(reference, standard, updates)
    fused = AdamWInBackward(ours.parameters(), seed=4, state_dtype=state_dtype, **SETTINGS)
    results = in_backward(ours, fused, updates)
    assert all(applied and norm > 0 for norm, applied in results)
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-6)
        assert fused.state[mine]["exp_avg"].dtype == getattr(torch, state_dtype)
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fused.state[mine][moment], standard.state[theirs][moment], atol=1e-6, rtol=1e-6)


def test_the_reported_norm_is_the_gradient_norm():
    model, batches = tiny_model(), micro_batches(2)
    for ids in batches:
        (lm_loss(model, ids) / 2).backward()
    expected = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    [(norm, applied)] = in_backward(model, AdamWInBackward(model.parameters(), **SETTINGS), [batches])
    assert applied and norm == pytest.approx(expected, rel=1e-5)


class TwoBranches(torch.nn.Module):
    """``first`` is used by every input, ``second`` only by inputs flagged to use it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)

    def forward(self, x, use_second: bool):
        return (self.first(x) + (self.second(x) if use_second else 0)).square().mean()


def test_a_parameter_without_gradient_in_the_last_backward_is_updated_by_finish():
    inputs = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    reference, ours = TwoBranches(), TwoBranches()
    standard = torch.optim.AdamW(reference.parameters(), **SETTINGS)
    reference(inputs, True).backward()
    reference(inputs, False).backward()
    standard.step()
    fused = AdamWInBackward(ours.parameters(), **SETTINGS)
    ours(inputs, True).backward()
    fused.arm()
    ours(inputs, False).backward()  # `second` got its gradient only in the earlier backward
    assert ours.second.weight.grad is not None and ours.first.weight.grad is None
    assert fused.finish()[1]
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-7, rtol=1e-6)


def test_a_parameter_with_a_non_finite_gradient_keeps_its_value_and_the_update_counts_as_skipped():
    model = tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    poisoned = model.model.layers[0].mlp.up_proj.weight
    poisoned.register_hook(lambda grad: grad * math.nan)
    optimizer = AdamWInBackward(model.parameters(), **SETTINGS)
    [(norm, applied)] = in_backward(model, optimizer, [micro_batches(1)])
    assert not applied and not math.isfinite(norm) and optimizer.nonfinite == 1
    for name, parameter in model.named_parameters():
        if parameter is poisoned:
            assert torch.equal(parameter, before[name]) and parameter not in optimizer.state
        else:  # the others were updated in the same backward: the documented difference from the standard update
            assert not torch.equal(parameter, before[name]), name


def test_a_non_finite_loss_disarms_the_backward():
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = AdamWInBackward(model.parameters(), **SETTINGS)
    optimizer.arm(False)
    (lm_loss(model, micro_batches(1)[0]) * math.inf).backward()
    norm, applied = optimizer.finish()
    assert not applied and not math.isfinite(norm) and not optimizer.state
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_a_reloaded_state_continues_exactly(tmp_path):
    updates = [micro_batches(2, seed) for seed in range(5)]
    straight = tiny_model()
    in_backward(straight, AdamWInBackward(straight.parameters(), seed=1, state_dtype="bfloat16", **SETTINGS), updates)
    resumed = tiny_model()
    first = AdamWInBackward(resumed.parameters(), seed=1, state_dtype="bfloat16", **SETTINGS)
    in_backward(resumed, first, updates[:3])
    torch.save(first.state_dict(), tmp_path / "optimizer.pt")
    first.remove_hooks()
    second = AdamWInBackward(resumed.parameters(), seed=1, state_dtype="bfloat16", **SETTINGS)
    second.load_state_dict(torch.load(tmp_path / "optimizer.pt"))
    assert {s["exp_avg"].dtype for s in second.state.values()} == {torch.bfloat16}
    in_backward(resumed, second, updates[3:])
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), straight.parameters(), strict=True))


def test_lean_resolves_to_the_values_in_force(tmp_path):
    lean = yaml.safe_load(dump_config(tiny_config(tmp_path, "lean", **{"train.memory": "lean"})))
    assert lean["optim"]["state_dtype"] == "bfloat16" and lean["optim"]["update_in_backward"] is True
    assert lean["optim"]["max_grad_norm"] is None  # turned off: it cannot be applied inside backward
    assert lean["train"]["gradient_checkpointing"] is True and lean["train"]["micro_batch_tokens"] == 600
    mine = tiny_config(tmp_path, "mine", **{"train.memory": "lean", "optim.state_dtype": "float32",
                                            "optim.update_in_backward": False, "train.micro_batch_tokens": 0})
    assert (mine.optim.state_dtype, mine.optim.update_in_backward, mine.optim.max_grad_norm) == ("float32", False, 1.0)
    assert mine.train.micro_batch_tokens == 0 and mine.train.gradient_checkpointing
    standard = tiny_config(tmp_path, "standard")
    assert (standard.optim.state_dtype, standard.optim.update_in_backward, standard.optim.max_grad_norm,
            standard.train.gradient_checkpointing) == ("float32", False, 1.0, False)


@pytest.mark.parametrize("switch", [{"train.memory": "lean"}, {"optim.update_in_backward": True}])
def test_explicit_clipping_with_the_update_in_backward_is_refused(tmp_path, switch):
    with pytest.raises(ConfigError, match=r"optim.max_grad_norm=1.0 cannot be applied with optim.update_in_backward"
                                          r"[\s\S]*set optim.max_grad_norm=null"):
        tiny_config(tmp_path, "clipped", **switch, **{"optim.max_grad_norm": 1.0})
    assert tiny_config(tmp_path, "unclipped", **switch, **{"optim.max_grad_norm": 0}).optim.update_in_backward


def test_the_update_in_backward_is_refused_on_several_processes():
    parameters = list(TwoBranches().parameters())
    with pytest.raises(ConfigError, match="cannot run on 2 processes"):
        build_optimizer(parameters, OptimConfig(update_in_backward=True, max_grad_norm=None), world_size=2)
    assert isinstance(build_optimizer(parameters, OptimConfig(update_in_backward=True)), AdamWInBackward)


def test_resume_may_change_the_memory_switch_but_not_the_optimizer():
    old = {"train": {"memory": "standard"}, "optim": {"update_in_backward": False}}
    assert resume.check_config(old, {"train": {"memory": "lean"}, "optim": {"update_in_backward": False}}, "ckpt")
    with pytest.raises(ConfigError, match=r"optim.update_in_backward: False -> True"):
        resume.check_config(old, {"train": {"memory": "lean"}, "optim": {"update_in_backward": True}}, "ckpt")


def test_a_lean_run_equals_the_update_after_backward_and_resumes_exactly(tmp_path):
    """Several token-budgeted passes per step (micro_batch_tokens=64), bf16 moments, checkpointing: the update
    inside backward gives the metrics of the update after it with the same settings, and a run cut at step 3
    continues exactly."""
    lean = {"train.memory": "lean", "train.micro_batch_tokens": 64, "optim.schedule": "constant",
            "train.save_every": 3}
    whole = train_steps(train(tiny_config(tmp_path, "whole", **lean, **{"train.max_steps": 8})).run_dir)
    assert whole[8]["loss"] < whole[1]["loss"] * 0.9 and all(m["skipped_updates"] == 0 for m in whole.values())
    after = train_steps(train(tiny_config(tmp_path, "after", **lean, **{"train.max_steps": 8,
                                                                        "optim.update_in_backward": False,
                                                                        "optim.max_grad_norm": "null"})).run_dir)
    assert_same_steps(whole, after, range(1, 9), rel=1e-6)
    train(tiny_config(tmp_path, "cut", **lean, **{"train.max_steps": 3}))
    resumed = train_steps(train(tiny_config(tmp_path, "cut", **lean, **{"train.max_steps": 8})).run_dir)
    assert sorted(resumed) == list(range(1, 9))
    assert_same_steps(whole, resumed, range(4, 9), rel=1e-6)


def bench_settings(tmp_path, **extra) -> dict:
    return {"workdir": str(tmp_path), "seed": 0, "model": "m", "dtype": "float32", "device": "cpu", "data": "d.jsonl",
            "lr": 1e-6, "steps": 2, "warmup_steps": 1, "batch_size": 4, "max_length": 64, "schedule": "constant",
            "loss": "sigmoid", "beta": 0.1, "gradient_checkpointing": None, "micro_batch_tokens": None, **extra}


def test_bench_set_makes_the_posttrain_side_lean(tmp_path):
    """The workers' run configs take ``--set`` last and leave the keys lean turns on unset: lean's values apply."""
    from posttrain.bench import dpo_posttrain, sft_posttrain
    from posttrain.config import RunConfig

    for worker in (sft_posttrain, dpo_posttrain):
        config = RunConfig.model_validate(worker.run_config(bench_settings(tmp_path, posttrain_set=["train.memory=lean"])))
        assert config.optim.update_in_backward and config.optim.max_grad_norm is None
        assert config.optim.state_dtype == "bfloat16" and config.train.gradient_checkpointing
        standard = RunConfig.model_validate(worker.run_config(bench_settings(tmp_path)))
        assert not standard.optim.update_in_backward and standard.optim.max_grad_norm == 1.0


@pytest.mark.parametrize("overrides", [["train.memroy=lean"], ["train.memory=fast"], ["train.memory"]])
def test_a_bad_bench_set_is_a_config_error_before_any_worker_runs(overrides):
    from posttrain.bench.sft import SftBenchOptions, run_sft_benchmark

    with pytest.raises(ConfigError, match=r"train\.mem"):
        run_sft_benchmark(SftBenchOptions(posttrain_set=overrides))


def test_lean_on_several_processes_keeps_the_update_after_backward(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_config(None, ["train.memory=lean"])
    assert not config.optim.update_in_backward and config.optim.max_grad_norm == 1.0
    assert config.optim.state_dtype == "bfloat16" and config.train.gradient_checkpointing


def test_lean_on_policy_runs_sample_with_the_learners_own_weights():
    assert load_config(None, ["method=grpo", "train.memory=lean"]).rollout.engine == "hf"
    assert load_config(None, ["method=distill", "train.memory=lean", "rollout.engine=vllm"]).rollout.engine == "vllm"
    assert load_config(None, ["method=grpo"]).rollout.engine == "auto"
