"""The RL loss on direct calls of ``RLMethod.step_batches`` and ``RLMethod.loss`` with a fixed tiny model.

The micro-batch split does not change the gradient, tokens and sampling log-probs line up with a plain
full-logits forward, and LaSeR's score is the log-prob of ``z_c`` after EOS (methods.md §6.2): the number a
separate forward of :func:`posttrain.evals.selfreward.reserved_logprobs` gives.
"""


import pytest
import torch

from posttrain.evals.selfreward import reserved_logprobs
from posttrain.models import tiny_tokenizer
from posttrain.ops import (
    group_advantages,
    laser_class_weights,
    laser_score,
    policy_loss,
    policy_loss_sum,
    self_reward_advantages,
)
from posttrain.trainers import rl as rl_module
from posttrain.trainers import run as run_module
from posttrain.trainers.run import train
from tests.helpers import train_steps
from tests.rl_helpers import (
    C_REF,
    LASER,
    VARIED_PROMPTS,
    G,
    direct_method,
    eos_prone_model,
    gradients,
    manual_logprobs,
    padded,
    reward,
    rewards_override,
    rl_config,
)


@pytest.mark.parametrize(
    "kind,laser", [("grpo", 0), ("bnpo", 0), ("dr_grpo", 0), ("dapo", 0), ("dapo", 1), ("gspo", 0)]
)
def test_micro_batches_of_one_group_give_the_gradient_of_one_big_batch(tmp_path, kind, laser):
    model = eos_prone_model()
    settings = [f"rl.loss={kind}", "rl.mask_truncated=true"]
    if laser:
        settings += [rewards_override(tmp_path, "lower", "even"), *LASER]
    small, split = direct_method(tmp_path, model, *settings, f"train.batch_size={G}")
    big, whole = direct_method(tmp_path, model, *settings, f"train.batch_size={G * len(VARIED_PROMPTS)}")
    assert len(split.micro_batches) == len(VARIED_PROMPTS) and len(whole.micro_batches) == 1
    generated = [[g.token_ids for g in method.engine.generations] for method in (small, big)]
    assert generated[0] == generated[1]  # sampling is seeded by the step: the same rollouts
    finished = [g.finish_reason == "eos" for g in small.engine.generations]
    # rows of several lengths, finished and truncated (masked): a wrong share per micro-batch would show
    assert len(set(map(len, generated[0]))) > 2 and any(finished) and not all(finished)
    loss_split, grads_split = gradients(model, small, split)
    loss_whole, grads_whole = gradients(model, big, whole)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    for a, b in zip(grads_split, grads_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert max(float(g.abs().max()) for g in grads_whole) > 1e-4


@pytest.mark.parametrize("kind", ["grpo", "bnpo", "dapo"])
def test_token_budget_passes_give_the_gradient_of_one_pass(tmp_path, kind):
    model = eos_prone_model()
    settings = [f"rl.loss={kind}", f"train.batch_size={G * len(VARIED_PROMPTS)}"]
    budget, split = direct_method(tmp_path, model, *settings, "train.micro_batch_tokens=40")
    one, whole = direct_method(tmp_path, model, *settings, "train.micro_batch_tokens=0")
    assert len(whole.micro_batches) == 1 and len(split.micro_batches) > 2
    for batch in split.micro_batches:  # rows grouped by length: each pass stays within the budget
        rows, width = batch.input_ids.shape
        assert rows == 1 or rows * width <= 40
    loss_split, grads_split = gradients(model, budget, split)
    loss_whole, grads_whole = gradients(model, one, whole)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    for a, b in zip(grads_split, grads_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "kind,temperature", [("grpo", 1), ("bnpo", 1), ("dr_grpo", 1), ("dapo", 1), ("dapo", 0.7), ("gspo", 1)]
)
def test_one_micro_batch_is_policy_loss_of_a_full_logits_forward(tmp_path, kind, temperature):
    model = eos_prone_model()
    settings = [f"rl.loss={kind}", f"rollout.temperature={temperature}", "train.batch_size=64"]
    method, work = direct_method(tmp_path, model, *settings)
    (batch,) = work.micro_batches
    generations = method.engine.generations
    with torch.no_grad():  # the sampling log-probs are the policy's own (generation left-pads the prompts)
        for g in generations:
            expected = torch.tensor(g.logprobs)
            torch.testing.assert_close(manual_logprobs(model, g, temperature)[0], expected, atol=1e-4, rtol=0)
        torch.manual_seed(0)
        for parameter in model.parameters():  # move the policy off the sampler: ratios ≠ 1, some clipped
            parameter.add_(0.05 * torch.randn_like(parameter))
    advantages = group_advantages(torch.tensor([reward("lower", g.text) for g in generations]), G)
    rows = [manual_logprobs(model, g, temperature) for g in generations]
    mask = padded([torch.ones(len(g)) for g in generations])
    old = padded([torch.tensor(g.logprobs) for g in generations])
    expected = policy_loss(
        padded([logprobs for logprobs, _ in rows]),
        old,
        advantages,
        mask,
        kind=kind,
        num_active_tokens=mask.sum(),
        max_completion_length=12,
    )
    model.zero_grad(set_to_none=True)
    expected.loss.backward()
    expected_grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        entropy = sum(float(-(logits.softmax(-1) * logits.log_softmax(-1)).sum()) for _, logits in rows)

    model.zero_grad(set_to_none=True)
    loss, stats = method.loss(model, batch, work.totals)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(expected.loss.detach()), rel=1e-4, abs=1e-6)
    for got, want in zip((p.grad for p in model.parameters()), expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
    assert 0 < stats["clip_region_sum"] < stats["trained_tokens"] == mask.sum()
    assert stats["clip_region_sum"] == pytest.approx(float(expected.clip_region) * float(mask.sum()))
    assert stats["entropy_sum"] == pytest.approx(entropy, rel=1e-4)


def test_laser_integrates_the_log_prob_of_the_reserved_token_after_eos(tmp_path, monkeypatch):
    model = eos_prone_model()
    method, work = direct_method(tmp_path, model, rewards_override(tmp_path, "lower", "even"), *LASER)
    (batch,) = work.micro_batches
    generations = method.engine.generations
    valid = torch.tensor([g.finish_reason == "eos" for g in generations])
    verifier = torch.tensor([reward("even", g.text) for g in generations])
    assert 0 < valid.sum() < len(valid) and 0 < verifier[valid].sum() < valid.sum()

    # a separate forward, as the self-reward evaluation does: prompt, completion ending in EOS, z_c
    prompts, completions = [g.prompt_ids for g in generations], [g.token_ids for g in generations]
    eos = tiny_tokenizer().eos_token_id
    expected_logprobs = reserved_logprobs(model, prompts, completions, eos, method.laser.reserved_id)
    expected_scores = laser_score(expected_logprobs, C_REF, 0.1)
    plain = group_advantages(torch.tensor([reward("lower", g.text) for g in generations]) + verifier, G)
    expected_advantages = self_reward_advantages(
        expected_scores, valid, plain, G, tau=0.5, filter_threshold=0
    )
    used = {}

    def recording_policy_loss(*args, **kwargs):
        used["advantages"] = args[2].detach().clone()
        return policy_loss_sum(*args, **kwargs)

    monkeypatch.setattr(rl_module, "policy_loss_sum", recording_policy_loss)
    _, stats = method.loss(model, batch, work.totals)
    torch.testing.assert_close(batch.laser.scores[valid], expected_scores[valid], atol=1e-6, rtol=0)
    torch.testing.assert_close(used["advantages"], expected_advantages, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(used["advantages"], plain, atol=1e-2)  # the integration changed them

    # the self-reward loss: class-balanced squared errors of the finished rows, averaged over all rows
    n, correct = int(valid.sum()), int((verifier[valid] == 1).sum())
    weights = torch.where(verifier == 1, n / (2 * correct), n / (2 * (n - correct))) * valid
    torch.testing.assert_close(weights.float(), laser_class_weights(verifier, valid))
    expected_loss = float((weights * (expected_scores - verifier) ** 2).sum() / len(valid))
    assert stats["self_reward_loss"] == pytest.approx(expected_loss, rel=1e-4)
    flipped = batch.laser.verifier.clone()
    flipped[~valid] = 1 - flipped[~valid]  # a truncated row's verdict must not matter
    batch.laser.verifier = flipped
    assert method.loss(model, batch, work.totals)[1]["self_reward_loss"] == pytest.approx(stats["self_reward_loss"])

    metrics = method.summarize({**work.stats, **stats})
    predicted = expected_scores > 0.5
    on_correct, on_incorrect = predicted[valid & (verifier == 1)], ~predicted[valid & (verifier == 0)]
    assert metrics["sv_acc_correct"] == pytest.approx(float(on_correct.float().mean()))
    assert metrics["sv_acc_incorrect"] == pytest.approx(float(on_incorrect.float().mean()))
    assert metrics["p_reserved"] == pytest.approx(float(expected_logprobs[valid].exp().mean()), rel=1e-5)
    assert metrics["self_reward"] == pytest.approx(float(expected_scores[valid].mean()), rel=1e-5)


def test_a_laser_run_logs_self_verification_after_the_loss_warm_up(tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "load_model", lambda *args, **kwargs: eos_prone_model())
    settings = [rewards_override(tmp_path, "lower", "even"), *LASER, "rl.laser.loss_warmup_steps=1"]
    settings += ["rollout.max_new_tokens=12", "rollout.prompts_per_step=4", "optim.lr=1e-4"]
    steps = train_steps(train(rl_config(tmp_path, "laser", *settings)).run_dir)
    assert "self_reward_loss" not in steps[1]
    assert steps[2]["self_reward_loss"] > 0 and steps[3]["self_reward_loss"] > 0
    for logged in steps.values():
        assert {"sv_acc_correct", "sv_acc_incorrect", "sv_f1", "self_reward"} <= set(logged)
        assert 0 < logged["p_reserved"] < 0.01  # z_c is never a likely next token


# --------------------------------------------------------------------------------------------- resume


def test_bf16_rollouts_make_the_cast_model_the_behaviour_policy(tmp_path):
    """``rollout.dtype=bfloat16``: the importance ratio's denominator is the log-prob under the bf16-weight
    model that drew the tokens, not the fp32 policy's; the policy itself stays fp32."""
    import copy

    model = eos_prone_model()
    bf16_model = copy.deepcopy(model)
    for parameter in bf16_model.parameters():
        parameter.data = parameter.data.to(torch.bfloat16)
    method, work = direct_method(tmp_path, model, "rollout.dtype=bfloat16", "train.batch_size=64",
                                 "train.micro_batch_tokens=0")
    (batch,) = work.micro_batches
    generations = method.engine.generations
    assert all(p.dtype == torch.float32 for p in model.parameters())
    gaps = []
    with torch.no_grad():
        for g in generations:
            recorded = torch.tensor(g.logprobs)
            torch.testing.assert_close(manual_logprobs(bf16_model, g, 1.0)[0].float(), recorded, atol=0.05, rtol=0)
            gaps.append((manual_logprobs(model, g, 1.0)[0] - recorded).abs().max())
    assert max(gaps) > 1e-3  # the fp32 policy is a different distribution: ratios are not all 1
    recorded = torch.cat([torch.tensor(g.logprobs) for g in generations])
    torch.testing.assert_close(batch.old_logprobs[batch.completion_mask.bool()], recorded)


def test_rl_kl_estimator_reaches_the_loss(tmp_path):
    """rl.kl_estimator picks the per-token estimate the run's KL term and its logged kl use."""
    from posttrain.ops import kl_estimate

    model = eos_prone_model()
    method, work = direct_method(tmp_path, model, "rl.beta=0.1", "rl.kl_estimator=k2")
    with torch.no_grad():  # move the policy away from the reference copied at construction
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    batch = work.micro_batches[0]
    _, stats = method.loss(model, batch, work.totals)
    logprobs = method._logprobs(model, batch)
    mask = batch.target_mask.to(logprobs.dtype)
    expected = float((kl_estimate(logprobs, batch.ref_logprobs, "k2") * mask).sum())
    assert expected > 0 and stats["kl_sum"] == pytest.approx(expected, rel=1e-4)


def test_rl_entropy_bonus_lowers_the_loss_by_its_share(tmp_path):
    """rl.entropy_coef: the step's loss is the policy loss minus c × the entropy, summed over response tokens and
    divided by the step's response tokens (the token mean over the step, whatever rl.loss)."""
    model = eos_prone_model()
    plain, work = direct_method(tmp_path, model)
    bonus, _ = direct_method(tmp_path, model, "rl.entropy_coef=0.05")
    for batch in work.micro_batches:
        without, stats = plain.loss(model, batch, work.totals)
        with_bonus, _ = bonus.loss(model, batch, work.totals)
        expected = float(without) - 0.05 * stats["entropy_sum"] / work.totals.of("tokens")
        assert float(with_bonus) == pytest.approx(expected, rel=1e-5)
