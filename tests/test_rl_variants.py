"""RL variants: the KL in the reward (token-level advantages), global whitening, DAPO's dynamic sampling and the
REINFORCE++ presets; the advantages by hand on small tensors, the sampling with scripted rollouts, and tiny runs."""

import contextlib
import math

import pytest
import torch

from posttrain.config import RL_PRESETS, dump_config
from posttrain.errors import ConfigError
from posttrain.ops import (
    group_advantages,
    kl_estimate,
    kl_penalized_advantages,
    policy_loss_sum,
    token_moments,
    whiten_advantages,
    zero_spread_groups,
)
from posttrain.rewards.scoring import RewardBatch
from posttrain.rollout import Generation
from posttrain.trainers import rl as rl_module
from posttrain.trainers.distributed import Processes
from posttrain.trainers.dynamic_sampling import fill_groups, refill_prompts
from posttrain.trainers.run import train
from tests.distributed_run import scripted
from tests.helpers import read_jsonl, train_steps
from tests.rl_helpers import G, direct_method, eos_prone_model, reward, rl_config

# ----------------------------------------------------------------------------------------- advantages by hand


def test_kl_in_the_reward_gives_each_token_its_return():
    advantages = torch.tensor([1.0, -0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.4, 0.5, 7.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # token t earns −β·KL_t, the last response token also the row's advantage: returns Σ_{s≥t} with γ = 1
    expected = torch.tensor([[1 - 0.5 * 0.6, 1 - 0.5 * 0.5, 1 - 0.5 * 0.3, 1.0],
                             [-0.5 - 0.5 * 0.9, -0.5 - 0.5 * 0.5, -0.5, -0.5]])
    torch.testing.assert_close(kl_penalized_advantages(advantages, kl, mask, beta=0.5), expected)


def test_whitening_uses_the_token_mean_and_population_std_of_all_response_tokens():
    advantages = torch.tensor([[0.7, 0.75, 0.85, 5.0], [-0.95, -0.75, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    tokens = torch.tensor([0.7, 0.75, 0.85, -0.95, -0.75])
    mean, std = tokens.mean(), tokens.std(correction=0)
    whitened = whiten_advantages(advantages, token_moments(advantages, mask))
    torch.testing.assert_close(whitened[mask.bool()], (tokens - mean) / std)
    # micro-batches (and processes) add their moments: the same result as one batch
    split = token_moments(advantages[:1], mask[:1]) + token_moments(advantages[1:], mask[1:])
    torch.testing.assert_close(whiten_advantages(advantages, split), whitened)
    # one advantage per row counts once per response token of the row
    rows = torch.tensor([2.0, -1.0])
    per_token = torch.tensor([2.0, 2.0, 2.0, -1.0, -1.0])
    expected = (rows - per_token.mean()) / per_token.std(correction=0)
    torch.testing.assert_close(whiten_advantages(rows, token_moments(rows, mask)), expected)


def test_reinforce_pp_advantages_match_openrlhf_formula_by_hand():
    """REINFORCE++-baseline on 2 groups of 2: r − group mean, the −β·k1 token rewards' returns, whitened."""
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    old = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.2, 0.3, 0.3], [0.6, 0.6, 0.6], [0.1, 0.8, 0.5]]))
    ref = torch.log(torch.tensor([[0.4, 0.4, 0.8], [0.3, 0.3, 0.3], [0.5, 0.7, 0.6], [0.2, 0.8, 0.5]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    beta = 0.1
    centered = group_advantages(rewards, 2, scale="none", baseline="mean")
    token = kl_penalized_advantages(centered, kl_estimate(old, ref, "k1"), mask, beta)
    got = whiten_advantages(token, token_moments(token, mask))
    # by hand, as OpenRLHF builds it: the reward on the last token, −β·log(π_old/π_ref) on every token, returns
    expected_rows = []
    for i in range(4):
        length = int(mask[i].sum())
        step_rewards = [-beta * float(old[i, t] - ref[i, t]) for t in range(length)]
        step_rewards[-1] += float(centered[i])
        expected_rows.append([sum(step_rewards[t:]) for t in range(length)])
    flat = torch.tensor([v for row in expected_rows for v in row])
    flat = (flat - flat.mean()) / flat.var(correction=0).clamp(min=1e-8).sqrt()
    torch.testing.assert_close(got[mask.bool()], flat)


def test_zero_spread_groups_are_trls_zero_std_groups():
    from trl.trainer.utils import nanstd

    torch.manual_seed(0)
    rewards = torch.randint(0, 3, (40,)).float() / 2  # many ties: whole groups of one value
    rewards[:4] = 0.25
    trl_zero_std = torch.isclose(nanstd(rewards.view(-1, 4), dim=1), torch.zeros(10))
    ours = zero_spread_groups(rewards, 4)
    assert ours[0] and 0 < int(ours.sum()) < 10
    assert torch.equal(ours, trl_zero_std)


def test_token_advantages_and_row_advantages_are_one_loss_formula():
    torch.manual_seed(1)
    logprobs = torch.randn(3, 5, requires_grad=True)
    old, mask = logprobs.detach() + 0.1 * torch.randn(3, 5), torch.tensor([[1, 1, 1, 0, 0]] * 2 + [[1, 1, 1, 1, 1]])
    rows = torch.tensor([0.5, -1.0, 2.0])
    for kind in ("grpo", "dapo", "dr_grpo"):
        by_row = policy_loss_sum(logprobs, old, rows, mask, kind)
        by_token = policy_loss_sum(logprobs, old, rows[:, None].expand(3, 5), mask, kind)
        torch.testing.assert_close(by_token.loss, by_row.loss)
        torch.testing.assert_close(by_token.clip_region, by_row.clip_region)


# ------------------------------------------------------------------------------------------------- presets


def test_a_preset_sets_the_keys_the_recipe_leaves_unset_and_config_yaml_shows_them(tmp_path):
    config = rl_config(tmp_path, "preset", "rl.preset=reinforce_pp", "rl.kl_estimator=k2", "rl.beta=0.01")
    assert config.rl.kl_in == "reward" and config.rl.baseline == "none" and config.rl.scale == "whiten"
    assert config.rl.loss == "dapo" and config.rl.kl_estimator == "k2"  # the recipe's key wins
    assert "kl_in: reward" in dump_config(config) and "scale: whiten" in dump_config(config)
    baseline = rl_config(tmp_path, "preset", "rl.preset=reinforce_pp_baseline").rl
    assert {key: getattr(baseline, key) for key in RL_PRESETS["reinforce_pp_baseline"]} == \
        RL_PRESETS["reinforce_pp_baseline"]
    assert baseline.kl_estimator == "k1" and baseline.baseline == "mean"
    # REINFORCE++ has no group statistics: a group of one is fine
    assert rl_config(tmp_path, "one", "rl.preset=reinforce_pp", "rollout.samples_per_prompt=1").rl.scale == "whiten"


@pytest.mark.parametrize("settings", [["rl.kl_in=reward", "rl.laser.enabled=true"],
                                      ["rl.dynamic_sampling=true", "rl.laser.enabled=true"],
                                      ["rl.preset=reinforce_pp", "rl.loss=gspo"],
                                      ["rl.preset=no_such_algorithm"]])
def test_settings_that_do_not_go_together_are_config_errors(tmp_path, settings):
    with pytest.raises(ConfigError, match="rl"):
        rl_config(tmp_path, "bad", *settings)


# ------------------------------------------------------------------------------------------ dynamic sampling


def test_refills_are_seeded_new_whole_blocks_and_distinct_per_slot():
    used = [0, 1, 6, 7]
    first = refill_prompts(20, 2, seed=3, step=5, used=used, slot=0, quota=4, count=4)
    assert first == refill_prompts(20, 2, seed=3, step=5, used=used, slot=0, quota=4, count=4)  # resumable
    assert len(first) == 4 and not set(first) & set(used)
    assert all(first[i] % 2 == 0 and first[i + 1] == first[i] + 1 for i in (0, 2))  # whole blocks
    second = refill_prompts(20, 2, seed=3, step=5, used=used, slot=1, quota=4, count=2)
    assert not set(second) & set(first)  # another round or process: other prompts
    assert first != refill_prompts(20, 2, seed=3, step=6, used=used, slot=0, quota=4, count=4)


def scripted_round(flat_prompts):
    """A round sampler whose rewards are all equal for the prompts in ``flat_prompts``, spread otherwise."""
    calls = []

    def sample(prompts, round_):
        calls.append((list(prompts), round_))
        generations, totals = [], []
        for index, prompt in enumerate(prompts):
            for sample_index in range(G):
                generations.append(Generation(index, sample_index, [prompt], [1], [0.0], f"p{prompt}", "eos"))
                totals.append(1.0 if prompt in flat_prompts else float(sample_index % 2))
        total = torch.tensor(totals)
        return generations, RewardBatch(total=total, components={"r": total.tolist()}, errors={"r": 1})

    return sample, calls


def test_dynamic_sampling_drops_flat_groups_and_refills_from_the_draw():
    sample, calls = scripted_round(flat_prompts={0, 2, 10})
    draws = iter([[10, 11], [12]])
    sampled = fill_groups(sample, [0, 1, 2], [0, 1, 2], Processes("cpu"), G, 1, 4,
                          lambda slot, quota, count: next(draws)[:count])
    # round 0 keeps 1 of 3, round 1 samples 2 and keeps 11, round 2 samples 1 (12) and the step is full
    assert [c[0] for c in calls] == [[0, 1, 2], [10, 11], [12]] and [c[1] for c in calls] == [0, 1, 2]
    assert sampled.prompts == [1, 11, 12] and sampled.rounds == 2 and sampled.dropped == 3
    assert [g.text for g in sampled.generations] == [f"p{p}" for p in (1, 11, 12) for _ in range(G)]
    assert [g.prompt_index for g in sampled.generations] == [i for i in range(3) for _ in range(G)]
    assert sampled.scored.total.tolist() == [0.0, 1.0, 0.0, 1.0] * 3 and sampled.scored.errors == {"r": 3}
    assert not zero_spread_groups(sampled.scored.total, G).any()


def test_dynamic_sampling_stops_at_the_round_limit_and_never_leaves_a_process_without_groups():
    sample, calls = scripted_round(flat_prompts={0, 1, 5, 6, 7})
    sampled = fill_groups(sample, [0, 1], [0, 1], Processes("cpu"), G, 1, 2, lambda slot, quota, count: [5, 6][:count])
    assert len(calls) == 2 and sampled.rounds == 1 and sampled.prompts == [0, 1] and sampled.dropped == 2
    assert zero_spread_groups(sampled.scored.total, G).all()  # the first round's groups, zero advantages
    sample, calls = scripted_round(flat_prompts={0, 5})
    sampled = fill_groups(sample, [0, 1], [0, 1], Processes("cpu"), G, 1, 2, lambda slot, quota, count: [5, 6][:count])
    assert sampled.prompts == [1] and sampled.dropped == 2  # the limit: trains on what was kept


# --------------------------------------------------------------------------------------------- the trainer


def test_kl_in_reward_reaches_the_loss_as_token_advantages_and_is_logged(tmp_path, monkeypatch):
    model = eos_prone_model()
    def move_the_reference(method):
        torch.manual_seed(0)
        with torch.no_grad():
            for parameter in method.reference.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))

    method, work = direct_method(tmp_path, model, "rl.beta=0.5", "rl.kl_in=reward", "train.batch_size=64",
                                 "rollout.temperature=0.7", prepare=move_the_reference)
    (batch,) = work.micro_batches
    generations = method.engine.generations
    assert batch.advantages.shape == batch.completion_mask.shape  # one advantage per token
    assert batch.ref_logprobs is None  # the KL lives in the advantages
    with torch.no_grad():
        reference = method._logprobs(method.reference, batch)
    kl = kl_estimate(batch.old_logprobs, reference, "k3")
    (order,) = method._micro_batch_rows(generations, False)  # the batch's rows, as the step ordered them
    rows = group_advantages(torch.tensor([reward("lower", g.text) for g in generations]), G)[order]
    expected = kl_penalized_advantages(rows, kl, batch.completion_mask, 0.5)
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(batch.advantages[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert float((expected[mask] - rows[:, None].expand_as(mask)[mask]).abs().max()) > 1e-4  # the KL counted
    with torch.no_grad():
        for parameter in model.parameters():  # the policy moves: the loss KL would be non-zero
            parameter.add_(0.01 * torch.randn_like(parameter))
    seen = {}

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return policy_loss_sum(*args, **kwargs)

    monkeypatch.setattr(rl_module, "policy_loss_sum", recording)
    _, stats = method.loss(model, batch, work.totals)
    assert seen["beta"] == 0.0 and seen["ref_logprobs"] is None and "kl_sum" not in stats
    metrics = method.summarize({**work.stats, **stats})
    expected_kl = float(torch.where(mask, kl, 0.0).sum() / mask.sum())
    assert metrics["kl"] == pytest.approx(expected_kl, rel=1e-4) and expected_kl > 0


FLAT_REWARD = '''
def flat_on_even_questions(prompt, completion, record):
    """1 for every completion of an even-numbered question (a group with no spread), else the length's parity."""
    question = int(prompt.split("Question ")[1][:2])
    return 1.0 if question % 2 == 0 else float(len(completion) % 2 == 0)
'''


def test_tiny_runs_with_each_new_option_train(tmp_path):
    (tmp_path / "flat.py").write_text(FLAT_REWARD)
    flat = f"rl.rewards={{functions: [{{path: {tmp_path / 'flat.py'}:flat_on_even_questions}}]}}"
    runs = {
        "kl_reward": ["rl.kl_in=reward", "rl.beta=0.05"],
        "reinforce_pp": ["rl.preset=reinforce_pp", "rl.beta=0.05"],
        "dynamic": ["rl.preset=reinforce_pp_baseline", "rl.beta=0.05", "rl.dynamic_sampling=true",
                    "rl.max_sampling_rounds=3", flat],
    }
    logged = {}
    for name, settings in runs.items():
        with scripted() if name == "dynamic" else contextlib.nullcontext():  # rollouts fixed by prompt and index
            run_dir = train(rl_config(tmp_path, name, "train.max_steps=2", *settings)).run_dir
        logged[name] = train_steps(run_dir)
        for metrics in logged[name].values():
            assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0 and math.isfinite(metrics["kl"])
    for name in ("kl_reward", "reinforce_pp"):  # the KL in the rewards: none before the first update
        assert abs(logged[name][1]["kl"]) < 1e-5 and abs(logged[name][2]["kl"]) > 1e-6
    dynamic = logged["dynamic"]
    assert sum(m["dropped_groups"] for m in dynamic.values()) > 0
    samples = read_jsonl(tmp_path / "dynamic" / "samples.jsonl")
    for step, metrics in dynamic.items():
        assert metrics["sampling_rounds"] in (0, 1, 2)
        groups: dict[int, list[float]] = {}
        for row in samples:
            if row["step"] == step:
                groups.setdefault(row["record"], []).append(row["reward"])
        assert all(len(rewards) == G for rewards in groups.values())
        if metrics["sampling_rounds"] < 2:  # the step filled up: two groups, none without spread
            assert len(groups) == 2 and all(len(set(rewards)) > 1 for rewards in groups.values())


def _gather_rows_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rows = torch.arange(3 if rank == 0 else 1, dtype=torch.float64) + 10 * rank  # rank 0: 3 rows, rank 1: 1
    gathered, start = Processes("cpu").gather_rows(rows)
    torch.save((gathered, start), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gather_rows_concatenates_parts_of_different_sizes_across_processes(tmp_path):
    torch.multiprocessing.start_processes(_gather_rows_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                                          start_method="fork")  # no re-import: the workers start at once
    for rank, expected_start in ((0, 0), (1, 3)):
        gathered, start = torch.load(tmp_path / f"rank{rank}.pt")
        assert gathered.tolist() == [0.0, 1.0, 2.0, 10.0] and start == expected_start
