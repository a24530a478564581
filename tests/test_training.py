"""The training loop: learning, gradient accumulation, multi-process equality, exact resume after SIGKILL."""

import json
import signal
import subprocess
import time

import pytest

from posttrain.trainers.checkpoint import list_checkpoints
from posttrain.trainers.run import train
from tests.helpers import posttrain_command, read_jsonl, tiny_config, tiny_overrides, train_steps

COMPARED = ("loss", "nll", "grad_norm", "lr", "tokens", "masked_fraction")


def assert_same_steps(first: dict, second: dict, steps, rel=1e-5):
    for step in steps:
        for key in COMPARED:
            assert second[step][key] == pytest.approx(first[step][key], rel=rel, abs=1e-7), (step, key)


def test_sft_run_writes_the_run_directory_and_learns(tmp_path):
    config = tiny_config(tmp_path, "learn", **{"train.max_steps": 12, "train.save_every": 6})
    result = train(config)
    run_dir = result.run_dir
    steps = train_steps(run_dir)
    assert sorted(steps) == list(range(1, 13))
    assert steps[12]["loss"] < steps[1]["loss"] * 0.9
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report.html").is_file()
    summary = json.loads((run_dir / "data_summary.json").read_text())
    assert summary["examples"] + summary["dropped"] == 64 and summary["steps"] == 12
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-6", "step-12"]
    final = list_checkpoints(run_dir)[-1]
    for name in ("model/config.json", "model/model.safetensors", "optimizer.pt", "scheduler.pt",
                 "trainer_state.json", "rng-rank0.pt"):
        assert (final / name).is_file(), name
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_profit_logs_masked_fraction_and_masks_a_random_model_completely(tmp_path):
    # a random model gives every target p ~ 1/vocab < tau, so ProFit keeps no token and the loss is 0
    steps = train_steps(train(tiny_config(tmp_path, "profit", **{"sft.loss": "profit", "train.max_steps": 2})).run_dir)
    assert steps[1]["masked_fraction"] == 1.0 and steps[1]["loss"] == 0.0 and steps[1]["nll"] > 4


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    big = train(tiny_config(tmp_path, "big", **{"train.batch_size": 4, "train.grad_accum": 1}))
    accumulated = train(tiny_config(tmp_path, "acc", **{"train.batch_size": 2, "train.grad_accum": 2}))
    assert_same_steps(train_steps(big.run_dir), train_steps(accumulated.run_dir), range(1, 7), rel=1e-4)


def test_token_budget_micro_batches_equal_one_batch(tmp_path):
    whole = train(tiny_config(tmp_path, "whole", **{"train.micro_batch_tokens": 0}))
    split = train(tiny_config(tmp_path, "split", **{"train.micro_batch_tokens": 150}))
    assert_same_steps(train_steps(whole.run_dir), train_steps(split.run_dir), range(1, 7), rel=1e-4)


def test_padded_rows_equal_packed_rows(tmp_path):
    packed = train(tiny_config(tmp_path, "packed", **{"data.packing": True}))
    padded = train(tiny_config(tmp_path, "padded", **{"data.packing": False}))
    assert_same_steps(train_steps(packed.run_dir), train_steps(padded.run_dir), range(1, 7), rel=1e-4)


def _wait_for(path, process, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_dir():
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared: {process.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear in time")


def test_resume_after_sigkill_continues_exactly(tmp_path):
    steps, kill_after = 40, 10
    extra = {"train.max_steps": steps, "train.save_every": 5, "train.keep_checkpoints": 3}
    uninterrupted = subprocess.run(posttrain_command("train", "-", *tiny_overrides(tmp_path, "whole", **extra)),
                                   capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    args = posttrain_command("train", "-", *tiny_overrides(tmp_path, "killed", **extra))
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "killed" / "checkpoints" / f"step-{kill_after}", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in list_checkpoints(tmp_path / "killed"))
    assert killed_at < steps, "the run finished before it could be killed"

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    whole, again = train_steps(tmp_path / "whole"), train_steps(tmp_path / "killed")
    assert sorted(again) == list(range(1, steps + 1)), "each step is logged exactly once"
    assert_same_steps(whole, again, range(killed_at + 1, steps + 1), rel=1e-6)


def test_finished_run_is_not_repeated_and_resume_never_starts_over(tmp_path):
    config = tiny_config(tmp_path, "done", **{"train.max_steps": 2})
    train(config)
    assert train(config).steps == 2  # resumes from the final checkpoint: nothing left to do
    again = train(tiny_config(tmp_path, "done", **{"train.max_steps": 2, "train.resume": "never"}))
    assert again.steps == 2 and len(read_jsonl(again.run_dir / "metrics.jsonl")) >= 2


def test_skipped_invalid_records_are_counted_in_the_run(tmp_path):
    data = tmp_path / "train.jsonl"
    good = '{"prompt": "1+1=", "completion": "2"}\n'
    data.write_text(good * 5 + '{"prompt": "x"}\n' + "not json\n")
    config = tiny_config(tmp_path, "skip", **{"data.train": f"{{path: {data}}}", "data.skip_invalid": True,
                                                "train.max_steps": 1})
    summary = json.loads((train(config).run_dir / "data_summary.json").read_text())
    assert summary["examples"] == 5 and summary["skipped"] == 2
    assert any(":6" in line for line in summary["skipped_records"])
    assert any(":7" in line for line in summary["skipped_records"])


def test_bf16_optimizer_state_learns_and_a_resumed_run_continues_exactly(tmp_path):
    import torch

    settings = {"optim.state_dtype": "bfloat16", "optim.schedule": "constant", "optim.warmup_ratio": 0.0,
                "train.save_every": 3}
    whole = train_steps(train(tiny_config(tmp_path, "whole", **settings, **{"train.max_steps": 8})).run_dir)
    assert whole[8]["loss"] < whole[1]["loss"] * 0.9
    train(tiny_config(tmp_path, "cut", **settings, **{"train.max_steps": 3}))
    state = torch.load(tmp_path / "cut" / "checkpoints" / "step-3" / "optimizer.pt", weights_only=True)["state"]
    assert {moment.dtype for s in state.values() for moment in (s["exp_avg"], s["exp_avg_sq"])} == {torch.bfloat16}
    resumed = train_steps(train(tiny_config(tmp_path, "cut", **settings, **{"train.max_steps": 8})).run_dir)
    assert sorted(resumed) == list(range(1, 9))
    assert_same_steps(whole, resumed, range(4, 9), rel=1e-6)


def test_sft_sample_block_draws_both_orders_of_a_pair_together_and_refuses_broken_blocks(tmp_path):
    from posttrain.errors import DataError
    from posttrain.models import load_model, load_tokenizer
    from posttrain.trainers.distributed import Processes
    from posttrain.trainers.run import build_method
    from posttrain.trainers.sampler import EpochSampler

    def config_for(records: int):
        data = tmp_path / f"pairs{records}.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"pair {i // 2} order {i % 2}", "completion": "[[A]]"}) + "\n"
                                for i in range(records)))
        return tiny_config(tmp_path, f"block{records}", **{"data.train": f"{{path: {data}}}",
                                                          "data.sample_block": 2, "train.batch_size": 2})

    tokenizer, processes = load_tokenizer("tiny-random"), Processes("cpu")
    model = load_model("tiny-random", device="cpu")
    method, _ = build_method(config_for(12), model, tokenizer, processes)
    assert method.sample_block == 2
    sampler = EpochSampler(method.num_examples, seed=3, block=method.sample_block)
    batches = [sampler.next_batch(method.examples_per_step) for _ in range(12)]  # two epochs
    assert all(b[0] // 2 == b[1] // 2 and b[0] != b[1] for b in batches)  # each batch: one pair, both orders
    assert {tuple(sorted(b)) for b in batches[:6]} == {(2 * i, 2 * i + 1) for i in range(6)}
    with pytest.raises(DataError, match="sample_block"):
        build_method(config_for(11), model, tokenizer, processes)


def test_a_task_source_with_split_held_out_gives_the_held_out_questions():
    from posttrain.config.data import DataSource
    from posttrain.errors import ConfigError
    from posttrain.trainers.inputs import load_source

    def questions(**split):
        source = DataSource(task="arithmetic", n=50, seed=0, levels=[1], **split)
        return {r["question"] for r in load_source(source, kind="prompt", skip_invalid=False).records}

    held_out, train_questions = questions(split="held_out"), questions()
    assert held_out and not held_out & train_questions
    assert held_out == {r["question"] for r in load_source(DataSource(task="arithmetic", n=50, seed=0, levels=[1]),
                                                           kind="prompt", skip_invalid=False, held_out=True).records}
    with pytest.raises((ConfigError, ValueError), match="train and held_out"):
        DataSource(task="arithmetic", split="test")


def test_a_weights_only_final_checkpoint_holds_the_same_model_and_refuses_to_continue(tmp_path):
    from safetensors.torch import load_file

    from posttrain.errors import ConfigError
    from posttrain.trainers.checkpoint import read_trainer_state
    from posttrain.trainers.pipeline import final_weights

    settings = {"train.max_steps": 4, "train.save_every": 2, "train.keep_checkpoints": 2}
    train(tiny_config(tmp_path, "full", **settings))
    lean = tiny_config(tmp_path, "lean", **settings, **{"train.final_checkpoint": "weights"})
    train(lean)
    middle, last = list_checkpoints(lean.run_dir)
    assert {p.name for p in last.iterdir()} == {"model", "trainer_state.json", "manifest.json"}
    assert read_trainer_state(last).weights_only and not read_trainer_state(middle).weights_only
    assert (middle / "optimizer.pt").is_file() and (middle / "rng-rank0.pt").is_file()  # mid-run: resumable
    kept = load_file(last / "model" / "model.safetensors")
    full = load_file(tmp_path / "full" / "checkpoints" / "step-4" / "model" / "model.safetensors")
    assert kept.keys() == full.keys() and all((kept[k] == full[k]).all() for k in kept)
    assert final_weights(lean.run_dir) == (last / "model").resolve()

    assert train(lean).steps == 4  # finished: nothing to continue, so the weights are enough
    with pytest.raises(ConfigError, match="holds only the weights") as refused:
        train(tiny_config(tmp_path, "lean", **{**settings, "train.max_steps": 6}, **{"train.final_checkpoint": "weights"}))
    assert "model.name=" in refused.value.fix
    follow = train(tiny_config(tmp_path, "next", **{"model.name": str(last / "model"), "train.max_steps": 1}))
    assert follow.steps == 1
