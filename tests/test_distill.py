"""The on-policy distillation trainer (TS-OPSD, GKD, OPSD/SDPO, G-OPD) on tiny random models."""

import json
import math
import statistics

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import ConfigError, DataError, ModelError
from posttrain.models import save_model, tiny_model, tiny_tokenizer
from posttrain.ops import token_divergence
from posttrain.trainers.checkpoint import list_checkpoints
from posttrain.trainers.distill import DistillMethod
from posttrain.trainers.distributed import Processes
from posttrain.trainers.run import train
from tests.helpers import read_jsonl, step_gradients, tiny_overrides, train_steps

PROMPTS = [f"Question {i:02d}: write something" for i in range(8)]


def write_prompts(tmp_path, answers: bool = True):
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p, "reference": "1", **({"answer": f"Step one.\n#### {i}"} if answers else {})}
            for i, p in enumerate(PROMPTS)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def distill_config(tmp_path, name, *settings: str, answers: bool = True):
    """A 3-step distillation run of the tiny model: 2 prompts × 2 samples × 8 tokens per step."""
    data = write_prompts(tmp_path, answers)
    values = {"method": "distill", "data.train": f"{{path: {data}}}", "train.max_steps": 3, "optim.lr": 1e-2,
              "rollout.prompts_per_step": 2, "rollout.samples_per_prompt": 2, "rollout.max_new_tokens": 8}
    return load_config(None, [*tiny_overrides(tmp_path, name, **values), *settings])


def sharp_model_dir(tmp_path, scale: float = 25.0, vocab_size: int | None = None, seed: int = 0):
    """A saved tiny model whose output layer is scaled up: low entropy, like a policy after RL."""
    model = tiny_model(vocab_size=vocab_size, seed=seed)
    with torch.no_grad():
        model.lm_head.weight *= scale
    out = tmp_path / f"sharp-{scale}-{vocab_size}-{seed}"
    save_model(model, tiny_tokenizer(), out)
    return out


def test_snapshot_teacher_at_temperature_one_gives_zero_loss_at_step_zero(tmp_path):
    """The negative control of the issue (methods.md §1.5.7), with a full copy and with LoRA's disabled adapter."""
    for name, extra in (("copy", []), ("lora", ["model.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj]}"])):
        config = distill_config(tmp_path, name, "distill.teacher=snapshot", "distill.teacher_temperature=1.0",
                                "train.max_steps=1", *extra)
        first = train_steps(train(config).run_dir)[1]
        assert first["loss"] == pytest.approx(0.0, abs=1e-6) and first["divergence"] == pytest.approx(0.0, abs=1e-6)
        assert first["grad_norm"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("teacher", ["self", "snapshot"])
def test_reheating_raises_the_entropy_of_a_sharp_model(tmp_path, teacher):
    model = sharp_model_dir(tmp_path)
    data = write_prompts(tmp_path)
    config = distill_config(tmp_path, teacher, f"model.name={model}", f"distill.teacher={teacher}",
                            "distill.teacher_temperature=2.0", "train.max_steps=6", "optim.lr=3e-3",
                            "distill.target_entropy=100", f"data.eval={{path: {data}}}", "distill.entropy_prompts=4")
    metrics = train_steps(train(config).run_dir)
    assert sorted(metrics) == list(range(1, 7))
    held_out = [metrics[s]["heldout_entropy"] for s in sorted(metrics)]
    assert held_out[-1] > held_out[0] + 0.1, held_out
    assert metrics[6]["entropy"] > metrics[1]["entropy"]
    assert metrics[1]["divergence"] > 0


def test_logged_metrics_agree_with_the_samples(tmp_path):
    config = distill_config(tmp_path, "logged", "distill.rewards={functions: [{name: math}]}",
                            "distill.divergence=jsd", "distill.beta=0.5", "distill.teacher_temperature=1.5")
    run_dir = train(config).run_dir
    metrics, samples = train_steps(run_dir), read_jsonl(run_dir / "samples.jsonl")
    assert sorted(metrics) == [1, 2, 3]
    for step, logged in metrics.items():
        rows = [row for row in samples if row["step"] == step]
        assert len(rows) == 4 and len({row["record"] for row in rows}) == 2
        assert logged["completion_length"] == pytest.approx(statistics.fmean(row["tokens"] for row in rows))
        assert logged["accuracy"] == pytest.approx(statistics.fmean(row["reward_math"] for row in rows))
        assert 0 < logged["divergence"] <= math.log(2) + 1e-6  # JSD_0.5 is bounded by log 2
        assert logged["loss"] == pytest.approx(logged["divergence"], rel=1e-4)


def test_a_run_stopped_at_the_target_entropy_stays_stopped_on_resume(tmp_path):
    data = write_prompts(tmp_path)
    settings = ["distill.target_entropy=0.01", f"data.eval={{path: {data}}}", "distill.entropy_prompts=2",
                "train.max_steps=5", "distill.teacher_temperature=2.0"]
    run_dir = train(distill_config(tmp_path, "stop", *settings)).run_dir
    assert sorted(train_steps(run_dir)) == [1]  # a random model's entropy is far above 0.01
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-1"]
    again = train(distill_config(tmp_path, "stop", *settings))
    assert again.steps == 1 and sorted(train_steps(run_dir)) == [1]


def crashed_in_step_three_and_resumed(tmp_path, monkeypatch, settings: list[str]) -> dict:
    """Run ``crashed`` with ``settings``, killed in its third step (one micro-batch a step), then resumed to its end;
    the resumed run's logged metrics by step."""
    original, calls = DistillMethod.loss, {"n": 0}

    def crash_in_step_three(self, model, batch, totals):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("killed")
        return original(self, model, batch, totals)

    monkeypatch.setattr(DistillMethod, "loss", crash_in_step_three)
    with pytest.raises(RuntimeError, match="killed"):
        train(distill_config(tmp_path, "crashed", *settings))
    monkeypatch.setattr(DistillMethod, "loss", original)
    return train_steps(train(distill_config(tmp_path, "crashed", *settings)).run_dir)


def test_a_crashed_run_resumes_exactly(tmp_path, monkeypatch):
    settings = ["train.max_steps=4", "train.save_every=2", "distill.teacher=snapshot", "distill.teacher_temperature=2"]
    whole = train_steps(train(distill_config(tmp_path, "whole", *settings)).run_dir)

    resumed = crashed_in_step_three_and_resumed(tmp_path, monkeypatch, settings)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "divergence", "entropy", "completion_length", "grad_norm"):
            assert resumed[step][key] == pytest.approx(whole[step][key], rel=1e-5, abs=1e-7), (step, key)
    samples = read_jsonl(tmp_path / "crashed" / "samples.jsonl")
    assert [row["step"] for row in samples] == [s for s in range(1, 5) for _ in range(4)]


def direct_method(tmp_path, model, *settings):
    config = distill_config(tmp_path, "direct", "rollout.prompts_per_step=4", "rollout.max_new_tokens=12", *settings)
    records = [{"prompt": p, "reference": "1", "answer": f"Reference solution {i}"} for i, p in enumerate(PROMPTS[:4])]
    method = DistillMethod(config, records, model, tiny_tokenizer(), Processes("cpu"))
    share = list(range(4))
    return method, method.step_batches(model, share, share, step=0)


def test_token_budget_passes_give_the_gradient_of_one_pass(tmp_path):
    model = tiny_model()
    method, whole = direct_method(tmp_path, model, "train.batch_size=8", "distill.teacher_temperature=2")
    split_method, split = direct_method(tmp_path, model, "train.batch_size=8", "distill.teacher_temperature=2",
                                        "train.micro_batch_tokens=30")
    assert len(whole.micro_batches) == 1 and len(split.micro_batches) > 2
    loss, grads = step_gradients(model, method, whole)
    split_loss, split_grads = step_gradients(model, split_method, split)
    assert split_loss == pytest.approx(loss, rel=1e-5)
    for a, b in zip(grads, split_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def full_row_logits(model, prompt_ids, completion_ids):
    ids = torch.tensor([[*prompt_ids, *completion_ids]])
    return model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1]


@pytest.mark.parametrize("weights", ["live", "initial"])
def test_self_context_teacher_sees_the_context_and_scores_the_same_tokens(tmp_path, weights):
    model = tiny_model()
    method, work = direct_method(tmp_path, model, "distill.teacher=self_context", "distill.divergence=reverse_kl",
                                 f"distill.context_weights={weights}", "distill.context_template='{context} | {prompt}'")
    assert (method.teacher.snapshot is not None) == (weights == "initial")
    batch = work.micro_batches[0]
    loss, _ = method.loss(model, batch, work.totals)
    expected, tokens = 0.0, 0
    for g in batch.generations:
        record = method.records[g.prompt_index]
        context_ids = method.context_prompts[g.prompt_index]
        assert tiny_tokenizer().decode(context_ids).startswith(record["answer"] + " | ")
        student = full_row_logits(model, g.prompt_ids, g.token_ids)
        teacher = full_row_logits(model, context_ids, g.token_ids)
        expected += float(token_divergence(student, teacher, "reverse_kl").detach().sum())
        tokens += len(g)
    assert tokens < work.totals.tokens  # the loss is this micro-batch's share of the step's token mean
    assert float(loss.detach()) == pytest.approx(expected / work.totals.tokens, rel=1e-4) and float(loss.detach()) > 0


def test_model_teacher_and_gopd_objective(tmp_path):
    teacher = sharp_model_dir(tmp_path, scale=3.0, seed=1)
    config = distill_config(tmp_path, "gkd", "distill.teacher=model", f"distill.teacher_model={teacher}",
                            "distill.objective=reward", "distill.gopd_lambda=1.5")
    metrics = train_steps(train(config).run_dir)
    assert sorted(metrics) == [1, 2, 3]
    assert all(m["divergence"] > 0 and math.isfinite(m["token_reward"]) for m in metrics.values())

    model = tiny_model()  # λ = 1 with the self-teacher at T = 1: every token reward is log q − log p = 0
    method, work = direct_method(tmp_path, model, "distill.objective=reward")
    loss, stats = method.loss(model, work.micro_batches[0], work.totals)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6) and stats["token_reward_sum"] == pytest.approx(0.0, abs=1e-4)


# ----------------------------------------------------------------------------------------- bad input


def test_bad_input_fails_before_any_training_step(tmp_path):
    other_vocab = sharp_model_dir(tmp_path, scale=1.0, vocab_size=len(tiny_tokenizer()) + 8)
    cases = [
        (ModelError, "output vocabularies have 260 and 268", ["distill.teacher=model", f"distill.teacher_model={other_vocab}"], True),
        (DataError, "no 'answer' field", ["distill.teacher=self_context"], False),
        (ConfigError, "top_k", ["distill.top_k_divergence=100000"], True),
    ]
    for index, (error, match, settings, answers) in enumerate(cases):
        config = distill_config(tmp_path, f"bad{index}", *settings, answers=answers)
        with pytest.raises(error, match=match):
            train(config)
        assert not (tmp_path / f"bad{index}" / "metrics.jsonl").exists()
    for settings, match in ((["distill.teacher_temperature=0"], "must be > 0"),
                            (["distill.teacher_temperature=-1.5"], "must be > 0"),
                            (["distill.teacher=model"], "teacher_model")):
        with pytest.raises(ConfigError, match=match):
            distill_config(tmp_path, "bad", *settings)
