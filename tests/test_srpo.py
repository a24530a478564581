"""SRPO (method: srpo): rollouts routed by their reward to GRPO's policy gradient or SDPO's distillation."""

import json
import math

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.ops import entropy_weights
from posttrain.trainers.distill import DistillMethod
from posttrain.trainers.distributed import Processes
from posttrain.trainers.run import train
from posttrain.trainers.srpo import SRPOMethod
from tests.helpers import step_gradients, train_steps
from tests.rl_helpers import VARIED_PROMPTS, direct_method, reward, rl_config, rl_overrides


def assert_same_step(model, first, second, rel=1e-6):
    loss, grads = step_gradients(model, *first)
    other_loss, other_grads = step_gradients(model, *second)
    assert loss == pytest.approx(other_loss, rel=rel, abs=1e-9)  # GRPO's on-policy loss value is ~0
    assert max(float(g.abs().max()) for g in grads) > 1e-4
    for a, b in zip(grads, other_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_with_every_rollout_correct_srpo_is_grpo(tmp_path):
    model = tiny_model()
    grpo = direct_method(tmp_path, model)
    srpo = direct_method(tmp_path, model, "method=srpo", "distill.feedback.success_threshold=-1",
                         "distill.feedback.sources=[verdict]", method_class=SRPOMethod)
    assert all(srpo[0].correct) and srpo[1].stats["feedback/distilled"] == 0
    assert not any(any(batch.distilled) for batch in srpo[1].micro_batches)
    assert_same_step(model, grpo, srpo)


def test_with_every_rollout_failed_and_unit_weights_srpo_is_sdpo(tmp_path):
    model = tiny_model()
    settings = ["distill.feedback={sources: [verdict], success_threshold: 2.0}", "distill.entropy_weighting=none",
                "distill.divergence=reverse_kl"]
    srpo = direct_method(tmp_path, model, "method=srpo", *settings, method_class=SRPOMethod)
    assert not any(srpo[0].correct) and srpo[1].stats["feedback/verdict"] == srpo[1].stats["rollouts"]
    # SDPO on the same prompts, seed and samples: method distill with the same teacher and rewards
    sdpo_overrides = [o for o in rl_overrides(tmp_path, "sdpo") if not o.startswith("rl.rewards=")]
    rewards = [o for o in rl_overrides(tmp_path, "sdpo") if o.startswith("rl.rewards=")][0]
    config = load_config(None, [*sdpo_overrides, "method=distill", "distill.teacher=self_feedback",
                                f"rollout.prompts_per_step={len(VARIED_PROMPTS)}", "rollout.max_new_tokens=12",
                                "distill.rewards=" + rewards.removeprefix("rl.rewards="), *settings])
    records = [{"prompt": p, "reference": "1"} for p in VARIED_PROMPTS]
    sdpo = DistillMethod(config, records, model, tiny_tokenizer(), Processes("cpu"))
    share = list(range(len(VARIED_PROMPTS)))
    sdpo_work = sdpo.step_batches(model, share, share, step=0)
    srpo_tokens = [g.token_ids for g in srpo[0].engine.generations]
    assert [g.token_ids for b in sdpo_work.micro_batches for g in b.generations] == srpo_tokens
    assert sdpo_work.totals.tokens == srpo[1].totals.tokens
    assert_same_step(model, (sdpo, sdpo_work), srpo, rel=1e-5)


def test_srpo_routes_each_rollout_by_the_reward_threshold(tmp_path):
    model = tiny_model()
    srpo, work = direct_method(tmp_path, model, "method=srpo", "distill.feedback={sources: [verdict], "
                               "success_threshold: 0.2}", method_class=SRPOMethod)
    generations = srpo.engine.generations
    lower = [reward("lower", g.text) for g in generations]
    assert srpo.correct == [value >= 0.2 for value in lower] and 0 < sum(srpo.correct) < len(lower)
    index = {(tuple(g.prompt_ids), tuple(g.token_ids)): i for i, g in enumerate(generations)}
    seen = []
    for batch in work.micro_batches:
        for row, distilled in enumerate(batch.distilled):
            start = int(batch.target_mask[row].argmax()) + 1
            ids = batch.input_ids[row].tolist()
            length = int(batch.target_mask[row].sum())
            i = index[(tuple(ids[:start]), tuple(ids[start : start + length]))]
            seen.append(i)
            assert distilled == (not srpo.correct[i]) and bool(batch.completion_mask[row].sum() > 0) == srpo.correct[i]
    assert sorted(seen) == list(range(len(generations)))
    assert work.stats["correct"] + work.stats["feedback/distilled"] == work.stats["rollouts"]
    loss, stats = srpo.loss(model, work.micro_batches[0], work.totals)
    assert math.isfinite(float(loss)) and stats["distill_loss"] >= 0


def test_entropy_weights():
    entropy = torch.tensor([0.0, 1.0, math.log(4), 3.0])
    torch.testing.assert_close(entropy_weights(entropy, "exp", tau=2.0), torch.exp(-entropy / 2.0))
    torch.testing.assert_close(entropy_weights(entropy, "linear", vocab_size=4), torch.tensor([1.0, 1 - 1 / math.log(4), 0.0, 0.0]))
    torch.testing.assert_close(entropy_weights(entropy, "none"), torch.ones(4))
    for kwargs, match in (({"kind": "exp", "tau": 0.0}, "tau"), ({"kind": "linear"}, "vocabulary size"),
                          ({"kind": "cubic"}, "entropy weighting")):
        with pytest.raises(ValueError, match=match):
            entropy_weights(entropy, **kwargs)


def test_a_short_srpo_run_logs_routes_and_weights(tmp_path):
    config = rl_config(tmp_path, "srpo", "method=srpo", "train.max_steps=2",
                       "distill.feedback={sources: [sibling, verdict], success_threshold: 0.15}")
    assert config.distill.teacher == "self_feedback" and config.distill.entropy_weighting == "exp"
    run_dir = train(config).run_dir
    metrics = train_steps(run_dir)
    assert sorted(metrics) == [1, 2]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    for sample in samples:  # each rollout's route follows its reward; a distilled one names its feedback
        assert sample["route"] == ("policy" if sample["reward"] >= 0.15 else "distill")
        assert sample["distilled"] == (sample["route"] == "distill" and bool(sample["feedback"]))
        assert "verdict" in sample["feedback"] or sample["route"] == "policy"
    assert {sample["route"] for sample in samples} == {"policy", "distill"}
    for logged in metrics.values():
        assert 0 <= logged["correct_fraction"] <= 1 and 0 < logged["distill_weight"] <= 1
        assert logged["feedback_verdict"] == pytest.approx(1 - logged["correct_fraction"])
        assert math.isfinite(logged["loss"]) and logged["distill_loss"] >= 0
        assert logged["entropy"] > 0  # over every routed token, also in a step with no correct rollout


def test_bad_srpo_settings_are_refused(tmp_path):
    for settings, match in ((["distill.teacher=self"], "set distill.teacher=self_feedback"),
                            (["distill.rewards={functions: [{name: math}]}"], "does not use distill.rewards"),
                            (["rl.laser.enabled=true", "rl.laser.verifier=lower"], "rl.laser"),
                            (["rollout.samples_per_prompt=1"], "group size")):
        with pytest.raises(ConfigError, match=match):
            rl_config(tmp_path, "bad", "method=srpo", *settings)


def test_micro_batches_give_the_gradient_of_one_pass(tmp_path):
    model = tiny_model()
    settings = ["method=srpo", "distill.feedback={sources: [sibling, verdict], success_threshold: 0.2}"]
    whole = direct_method(tmp_path, model, *settings, "train.batch_size=16", method_class=SRPOMethod)
    split = direct_method(tmp_path, model, *settings, "train.batch_size=4", "train.micro_batch_tokens=40",
                          method_class=SRPOMethod)
    assert len(whole[1].micro_batches) == 1 and len(split[1].micro_batches) > 4
    assert 0 < sum(whole[0].correct) < len(whole[0].correct)
    assert_same_step(model, whole, split, rel=1e-5)


def test_srpo_averages_an_ema_teacher_and_checkpoints_it(tmp_path):
    config = rl_config(tmp_path, "ema", "method=srpo", "train.max_steps=1", "train.save_every=1",
                       "distill.context_weights=ema", "distill.feedback={sources: [verdict], success_threshold: 0.15}")
    method_steps = []
    original = SRPOMethod.after_step

    def record(self, model, step):
        before = [p.detach().clone() for p in self.teacher.average.parameters()]
        result = original(self, model, step)
        method_steps.append(any(not torch.equal(b, a) for b, a in zip(before, self.teacher.average.parameters(),
                                                                     strict=True)))
        return result

    SRPOMethod.after_step = record
    try:
        run_dir = train(config).run_dir
    finally:
        SRPOMethod.after_step = original
    assert method_steps == [True]  # the average moved after the update
    assert (run_dir / "checkpoints" / "step-1" / "ema_teacher" / "model.safetensors").is_file()
