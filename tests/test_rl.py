"""The RL trainer (GRPO family and LaSeR) on the tiny random model.

Whole runs check what is logged, that a custom reward is learned and that a killed run resumes exactly;
direct calls of ``RLMethod.step_batches`` and ``RLMethod.loss`` on a fixed model check that the
micro-batch split does not change the gradient, that tokens and sampling log-probs line up with a plain
full-logits forward, and that LaSeR's score is the log-prob of ``z_c`` after EOS (methods.md §6.2): the
number a separate forward of :func:`posttrain.evals.selfreward.reserved_logprobs` gives.
"""

import json
import math
import signal
import statistics
import subprocess
import time

import pytest
import torch

from posttrain.config import load_config
from posttrain.data import encode_prompt
from posttrain.errors import ConfigError, DataError, ModelError, PosttrainError
from posttrain.evals.selfreward import reserved_logprobs
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.ops import (
    group_advantages,
    laser_class_weights,
    laser_score,
    policy_loss,
    self_reward_advantages,
)
from posttrain.trainers import rl as rl_module
from posttrain.trainers import run as run_module
from posttrain.trainers.checkpoint import list_checkpoints
from posttrain.trainers.distributed import Processes
from posttrain.trainers.rl import RLMethod
from posttrain.trainers.run import train
from tests.helpers import posttrain_command, read_jsonl, tiny_overrides, train_steps

REWARD_SOURCE = '''
import string


def lower(prompt, completion, record):
    """Share of the completion's characters that are lowercase ASCII letters."""
    return sum(c in string.ascii_lowercase for c in completion) / max(len(completion), 1)


def even(prompt, completion, record):
    """1 when the completion has an even number of characters: a 0/1 verifier."""
    return float(len(completion) % 2 == 0)


def not_a_number(prompt, completion, record):
    return float("nan")
'''
REWARDS: dict = {}
exec(REWARD_SOURCE, REWARDS)  # the functions the runs load from the file, for computing expectations

G = 4
PROMPTS = [f"Question {i:02d}: write something" for i in range(8)]  # one token length for all
VARIED_PROMPTS = ["Q: 1+1=", "Say hi:", "abc", "The quick brown fox jumps"]  # left-padded in generation
C_REF = -10.72  # log p(z_c) of the EOS-prone model is about -5.7, so r_s = 0.1·(log p − C_REF) ≈ 0.5
LASER = ["rl.laser.enabled=true", "rl.laser.verifier=even", f"rl.laser.c_ref={C_REF}", "rl.laser.tau=0.5"]
LASER += ["rl.laser.filter_threshold=0", "rl.laser.alpha=1", "train.batch_size=64"]


def reward(name: str, value) -> float:
    return REWARDS[name]("", value, {})


def rewards_override(tmp_path, *specs: str) -> str:
    """``"lower", "even:0.5"`` → ``rl.rewards=`` those functions of the test's reward file (weight after ``:``)."""
    functions = []
    for spec in specs:
        name, _, weight = spec.partition(":")
        functions.append(f"{{path: {tmp_path / 'r.py'}:{name}, weight: {weight or 1}}}")
    return f"rl.rewards={{functions: [{', '.join(functions)}]}}"


def rl_overrides(tmp_path, name, *settings: str, references: bool = True) -> list[str]:
    """A 3-step GRPO run of the tiny model on 8 prompts (2 per step, G = 4), then ``key=value`` settings."""
    (tmp_path / "r.py").write_text(REWARD_SOURCE)
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p, **({"reference": "1"} if references else {})} for p in PROMPTS]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    values = {"method": "grpo", "data.train": f"{{path: {data}}}", "train.max_steps": 3, "optim.lr": 1e-2}
    values.update(
        {"train.batch_size": G, "rl.group_size": G, "rl.prompts_per_step": 2, "rl.max_new_tokens": 8}
    )
    return [*tiny_overrides(tmp_path, name, **values), rewards_override(tmp_path, "lower"), *settings]


def rl_config(tmp_path, name, *settings: str, references: bool = True):
    return load_config(None, rl_overrides(tmp_path, name, *settings, references=references))


# ------------------------------------------------------------------------------------------ whole runs


def test_a_run_logs_rewards_entropy_clipping_kl_and_writes_g_samples_per_prompt(tmp_path):
    config = rl_config(tmp_path, "run", "rl.beta=0.05", rewards_override(tmp_path, "lower", "even:0.5"))
    run_dir = train(config).run_dir
    metrics, samples = train_steps(run_dir), read_jsonl(run_dir / "samples.jsonl")
    assert sorted(metrics) == [1, 2, 3]
    prompt_tokens = len(encode_prompt({"prompt": PROMPTS[0]}, tiny_tokenizer()))
    for step, logged in metrics.items():
        rows = [row for row in samples if row["step"] == step]
        records = {row["record"] for row in rows}
        assert len(rows) == 2 * G and len(records) == 2
        for record in records:
            group = [row for row in rows if row["record"] == record]
            assert sorted(row["sample"] for row in group) == list(range(G))
            advantages = group_advantages(torch.tensor([row["reward"] for row in group]), G)
            torch.testing.assert_close(torch.tensor([row["advantage"] for row in group]), advantages)
        for row in rows:
            lower, even = reward("lower", row["completion"]), reward("even", row["completion"])
            assert row["reward_lower"] == pytest.approx(lower) and row["reward_even"] == even
            assert row["reward"] == pytest.approx(lower + 0.5 * even, abs=1e-6)
        totals = [row["reward"] for row in rows]
        assert logged["reward"] == pytest.approx(statistics.fmean(totals), abs=1e-6)
        assert logged["reward_std"] == pytest.approx(statistics.pstdev(totals), abs=1e-5)
        for key in ("reward_lower", "reward_even"):
            assert logged[key] == pytest.approx(statistics.fmean(row[key] for row in rows))
        assert logged["completion_length"] == pytest.approx(statistics.fmean(row["tokens"] for row in rows))
        truncated = statistics.fmean(row["finish_reason"] == "length" for row in rows)
        assert logged["truncated_fraction"] == pytest.approx(truncated)
        assert logged["tokens"] == sum(prompt_tokens + row["tokens"] for row in rows)
        # a random model is near uniform over the vocabulary: the entropy is close to its maximum
        assert 4.0 < logged["entropy"] <= math.log(len(tiny_tokenizer())) + 1e-4
        assert logged["clip_fraction"] == 0.0  # one update per batch: on-policy, every ratio is 1
        assert math.isfinite(logged["loss"]) and logged["grad_norm"] > 0
    assert metrics[1]["kl"] == pytest.approx(0.0, abs=1e-7)  # the reference is the initial policy
    assert metrics[3]["kl"] > 1e-6


def test_the_policy_learns_a_custom_reward(tmp_path):
    config = rl_config(
        tmp_path, "learn", "train.max_steps=20", "rl.prompts_per_step=4", "rl.max_new_tokens=12"
    )
    rewards = [m["reward"] for _, m in sorted(train_steps(train(config).run_dir).items())]
    assert statistics.fmean(rewards[-5:]) > statistics.fmean(rewards[:5]) + 0.2, rewards


# -------------------------------------------------------------------------------- direct method calls


class RecordingEngine:
    """A rollout engine that keeps its latest generations for the test to inspect."""

    def __init__(self, engine):
        self.engine = engine
        self.generations = []

    def generate(self, prompt_ids, params):
        self.generations = self.engine.generate(prompt_ids, params)
        return self.generations


def eos_prone_model():
    """The tiny model, changed so that about half of 12-token completions end with EOS and the log-prob
    of the reserved token (id 0) varies visibly with the context."""
    model = tiny_model()
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] += 1.0  # a constant direction in the residual stream...
        model.lm_head.weight[tiny_tokenizer().eos_token_id, 0] = 0.3  # ...that raises the EOS logit
        model.lm_head.weight[0, 1:] *= 30
    return model


def direct_method(tmp_path, model, *settings: str) -> tuple[RLMethod, list]:
    """An RLMethod over VARIED_PROMPTS (all in one step, 12 new tokens) and the micro-batches of step 0."""
    overrides = [f"rl.prompts_per_step={len(VARIED_PROMPTS)}", "rl.max_new_tokens=12", *settings]
    config = rl_config(tmp_path, "direct", *overrides)
    records = [{"prompt": p, "reference": "1"} for p in VARIED_PROMPTS]
    method = RLMethod(config, records, model, tiny_tokenizer(), Processes("cpu"))
    method.engine = RecordingEngine(method.engine)
    share = list(range(len(VARIED_PROMPTS)))
    return method, method.step_batches(model, share, share, step=0)


def gradients(model, method, batches) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in batches:
        loss, _ = method.loss(model, batch, 0.0)
        loss.backward()
        total += float(loss.detach())
    return total, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("kind,laser", [("grpo", 0), ("bnpo", 0), ("dr_grpo", 0), ("dapo", 0), ("dapo", 1)])
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
    loss_split, grads_split = gradients(model, small, split.micro_batches)
    loss_whole, grads_whole = gradients(model, big, whole.micro_batches)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    for a, b in zip(grads_split, grads_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert max(float(g.abs().max()) for g in grads_whole) > 1e-4


@pytest.mark.parametrize("kind", ["grpo", "bnpo", "dapo"])
def test_token_budget_passes_give_the_gradient_of_one_pass(tmp_path, kind):
    model = eos_prone_model()
    settings = [f"rl.loss={kind}", f"train.batch_size={G * len(VARIED_PROMPTS)}"]
    budget, split = direct_method(tmp_path, model, *settings, "rl.micro_batch_tokens=40")
    one, whole = direct_method(tmp_path, model, *settings, "rl.micro_batch_tokens=0")
    assert len(whole.micro_batches) == 1 and len(split.micro_batches) > 2
    for batch in split.micro_batches:  # rows grouped by length: each pass stays within the budget
        rows, width = batch.input_ids.shape
        assert rows == 1 or rows * width <= 40
    loss_split, grads_split = gradients(model, budget, split.micro_batches)
    loss_whole, grads_whole = gradients(model, one, whole.micro_batches)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5, abs=1e-7)
    for a, b in zip(grads_split, grads_whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def manual_logprobs(model, generation, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(logits / T)`` of each completion token from the full logits of its unpadded row,
    and those tempered logits."""
    ids = torch.tensor([[*generation.prompt_ids, *generation.token_ids]])
    logits = model(input_ids=ids).logits[0, len(generation.prompt_ids) - 1 : -1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(generation.token_ids)[:, None])[:, 0], logits


def padded(rows: list[torch.Tensor]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])


@pytest.mark.parametrize(
    "kind,temperature", [("grpo", 1), ("bnpo", 1), ("dr_grpo", 1), ("dapo", 1), ("dapo", 0.7)]
)
def test_one_micro_batch_is_policy_loss_of_a_full_logits_forward(tmp_path, kind, temperature):
    model = eos_prone_model()
    settings = [f"rl.loss={kind}", f"rl.temperature={temperature}", "train.batch_size=64"]
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
    loss, stats = method.loss(model, batch, 0.0)
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
    expected_logprobs = reserved_logprobs(model, prompts, completions, eos, method.reserved_id)
    expected_scores = laser_score(expected_logprobs, C_REF, 0.1)
    plain = group_advantages(torch.tensor([reward("lower", g.text) for g in generations]) + verifier, G)
    expected_advantages = self_reward_advantages(
        expected_scores, valid, plain, G, tau=0.5, filter_threshold=0
    )
    used = {}

    def recording_policy_loss(*args, **kwargs):
        used["advantages"] = args[2].detach().clone()
        return policy_loss(*args, **kwargs)

    monkeypatch.setattr(rl_module, "policy_loss", recording_policy_loss)
    _, stats = method.loss(model, batch, 0.0)
    torch.testing.assert_close(batch.scores[valid], expected_scores[valid], atol=1e-6, rtol=0)
    torch.testing.assert_close(used["advantages"], expected_advantages, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(used["advantages"], plain, atol=1e-2)  # the integration changed them

    # the self-reward loss: class-balanced squared errors of the finished rows, averaged over all rows
    n, correct = int(valid.sum()), int((verifier[valid] == 1).sum())
    weights = torch.where(verifier == 1, n / (2 * correct), n / (2 * (n - correct))) * valid
    torch.testing.assert_close(weights.float(), laser_class_weights(verifier, valid))
    expected_loss = float((weights * (expected_scores - verifier) ** 2).sum() / len(valid))
    assert stats["self_reward_loss"] == pytest.approx(expected_loss, rel=1e-4)
    flipped = batch.verifier.clone()
    flipped[~valid] = 1 - flipped[~valid]  # a truncated row's verdict must not matter
    batch.verifier = flipped
    assert method.loss(model, batch, 0.0)[1]["self_reward_loss"] == pytest.approx(stats["self_reward_loss"])

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
    settings += ["rl.max_new_tokens=12", "rl.prompts_per_step=4", "optim.lr=1e-4"]
    steps = train_steps(train(rl_config(tmp_path, "laser", *settings)).run_dir)
    assert "self_reward_loss" not in steps[1]
    assert steps[2]["self_reward_loss"] > 0 and steps[3]["self_reward_loss"] > 0
    for logged in steps.values():
        assert {"sv_acc_correct", "sv_acc_incorrect", "sv_f1", "self_reward"} <= set(logged)
        assert 0 < logged["p_reserved"] < 0.01  # z_c is never a likely next token


# --------------------------------------------------------------------------------------------- resume


def last_sampled_step(path) -> int:
    """The step of the last complete line of a samples file (0 when there is none yet)."""
    last = 0
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            last = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError):
            break  # a line still being written
    return last


def wait_until(condition, process, timeout=180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {process.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("the run did not get there in time")


def test_rl_resume_after_sigkill_continues_exactly(tmp_path):
    steps, kill_after = 30, 10
    settings = [f"train.max_steps={steps}", "train.save_every=5", "rl.beta=0.05", "rl.updates_per_step=2"]
    command = posttrain_command("train", "-", *rl_overrides(tmp_path, "whole", *settings))
    whole = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    args = posttrain_command("train", "-", *rl_overrides(tmp_path, "killed", *settings))
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = tmp_path / "killed"
    # kill once the run has sampled past the checkpoint, so the resumed run must drop those samples
    checkpoint = killed / "checkpoints" / f"step-{kill_after}"
    wait_until(
        lambda: checkpoint.is_dir() and last_sampled_step(killed / "samples.jsonl") > kill_after, process
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in list_checkpoints(killed))
    assert killed_at < last_sampled_step(killed / "samples.jsonl") < steps, "the run was not killed in time"

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    first, again = train_steps(tmp_path / "whole"), train_steps(killed)
    assert sorted(again) == list(range(1, steps + 1))
    for step in range(killed_at + 1, steps + 1):
        for key in (
            "loss",
            "reward",
            "reward_std",
            "entropy",
            "kl",
            "clip_fraction",
            "grad_norm",
            "lr",
            "tokens",
        ):
            assert again[step][key] == pytest.approx(first[step][key], rel=1e-5, abs=1e-7), (step, key)
    samples = [
        [(r["step"], r["completion"]) for r in read_jsonl(run / "samples.jsonl")]
        for run in (tmp_path / "whole", killed)
    ]
    assert samples[0] == samples[1]  # each step's rollouts once, as in the uninterrupted run


# ------------------------------------------------------------------------------------------ bad input


def test_math_reward_needs_references_and_names_the_data(tmp_path):
    config = rl_config(tmp_path, "noref", "rl.rewards={functions: [{name: math}]}", references=False)
    with pytest.raises(DataError, match="reference") as error:
        train(config)
    assert str(tmp_path / "prompts.jsonl") in str(error.value)


def test_laser_verifier_must_be_one_of_the_rewards(tmp_path):
    config = rl_config(tmp_path, "verifier", "rl.laser.enabled=true", "rl.laser.verifier=math")
    with pytest.raises(ConfigError, match="rl.laser.verifier") as error:
        train(config)
    assert "'lower'" in str(error.value)  # names the rewards there are


def test_group_of_one_with_group_scaling_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="group_size"):
        rl_config(tmp_path, "one", "rl.group_size=1")
    assert rl_config(tmp_path, "one", "rl.group_size=1", "rl.scale=none").rl.group_size == 1


def test_reserved_token_missing_from_the_vocabulary_is_a_model_error(tmp_path):
    settings = ["rl.laser.enabled=true", "rl.laser.verifier=lower", "rl.laser.token=<|no_such_token|>"]
    with pytest.raises(ModelError, match="no_such_token"):
        train(rl_config(tmp_path, "token", *settings))


def test_a_reward_that_is_always_nan_stops_the_run(tmp_path):
    config = rl_config(tmp_path, "nan", rewards_override(tmp_path, "lower", "not_a_number"))
    with pytest.raises(PosttrainError, match="max_error_rate") as error:
        train(config)
    assert "not_a_number" in str(error.value) and "nan" in str(error.value)


def test_reward_errors_below_the_limit_are_counted_and_scored_as_on_error(tmp_path):
    rewards = f"rl.rewards={{functions: [{{path: {tmp_path / 'r.py'}:not_a_number}}], max_error_rate: 1, on_error: -1}}"
    steps = train_steps(train(rl_config(tmp_path, "counted", rewards, "train.max_steps=1")).run_dir)
    assert steps[1]["reward_errors"] == 2 * G and steps[1]["reward"] == -1.0
