"""Several processes under accelerate's launcher (gloo on the CPU) train exactly as one process with the same global
batch, under DDP and under FSDP2, for SFT, DPO and GRPO, with gradient accumulation and clipping; FSDP checkpoints
are sharded, resume exactly, resume as one process, and export to one HF directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from posttrain.config import load_config
from posttrain.models import export_checkpoint
from posttrain.models.saving import consolidated_model
from posttrain.trainers import pipeline
from posttrain.trainers.checkpoint import list_checkpoints, read_trainer_state
from posttrain.trainers.run import train
from tests import distributed_run
from tests.helpers import tiny_overrides, train_steps
from tests.rl_helpers import rl_overrides
from tests.test_distill import write_prompts
from tests.test_preference import overrides as dpo_overrides

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = Path(sys.executable).parent / "accelerate"
CLIP = {"sft": 0.05, "dpo": 0.05, "grpo": 0.001, "distill": 0.001}  # below the gradient norms of these runs: every step is clipped


def sft(tmp_path, name, batch, steps, *extra):
    return [*tiny_overrides(tmp_path, name, **{"train.batch_size": batch, "train.grad_accum": 2,
                                               "train.max_steps": steps, "optim.schedule": "constant"}),
            f"optim.max_grad_norm={CLIP['sft']}", *extra]


def dpo(tmp_path, name, batch):
    return dpo_overrides(tmp_path, name, f"train.batch_size={batch}", "train.grad_accum=2", "train.max_steps=2",
                         "train.micro_batch_tokens=64", f"optim.max_grad_norm={CLIP['dpo']}")


def grpo(tmp_path, name):
    return rl_overrides(tmp_path, name, "train.max_steps=2", "rl.beta=0.05", f"optim.max_grad_norm={CLIP['grpo']}")


def distill(tmp_path, name):
    """TS-OPSD against a frozen snapshot teacher at T = 2 (sharded like the policy under FSDP)."""
    values = {"method": "distill", "data.train": f"{{path: {write_prompts(tmp_path)}}}", "train.max_steps": 2,
              "optim.lr": 1e-2, "rollout.prompts_per_step": 2, "rollout.samples_per_prompt": 2,
              "rollout.max_new_tokens": 8, "distill.teacher": "snapshot", "distill.teacher_temperature": 2.0}
    return [*tiny_overrides(tmp_path, name, **values), f"optim.max_grad_norm={CLIP['distill']}"]


def launch(strategy: str, runs: list[list[str]]) -> None:
    port = str(29600 + (os.getpid() + len(strategy)) % 1000)
    engine = ["--use_fsdp", "--fsdp_version", "2"] if strategy == "fsdp" else ["--multi_gpu"]
    command = [str(LAUNCHER), "launch", *engine, "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tests.distributed_run", json.dumps(runs)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference runs: one process, the whole global batch."""
    root = tmp_path_factory.mktemp("one")
    with distributed_run.scripted():
        for overrides in (sft(root, "sft", 4, 3), dpo(root, "dpo", 4), grpo(root, "grpo"), distill(root, "distill")):
            train(load_config(None, overrides))
    return root


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_processes(request, tmp_path_factory) -> tuple[str, Path]:
    """The same runs on two processes with half the batch each (DPO's keeping only the final weights), plus a run cut
    after 2 steps and resumed."""
    root = tmp_path_factory.mktemp(request.param)
    launch(request.param, [sft(root, "sft", 2, 3), [*dpo(root, "dpo", 2), "train.final_checkpoint=weights"],
                           grpo(root, "grpo"), distill(root, "distill"),
                           sft(root, "cut", 2, 2), sft(root, "cut", 2, 3), sft(root, "half", 2, 2),
                           sft(root, "lean", 2, 3, "train.memory=lean")])
    return request.param, root


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoint = list_checkpoints(run_dir)[-1]
    if (checkpoint / "sharded").is_dir():
        return consolidated_model(checkpoint).state_dict()
    return load_file(checkpoint / "model" / "model.safetensors")


def assert_same_run(one: Path, two: Path, steps: range) -> None:
    first, second = train_steps(one), train_steps(two)
    for step in steps:
        for key in ("loss", "grad_norm"):
            assert second[step][key] == pytest.approx(first[step][key], rel=1e-4, abs=1e-6), (step, key)
    expected, got = final_weights(one), final_weights(two)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("method,steps", [("sft", 3), ("dpo", 2), ("grpo", 2), ("distill", 2)])
def test_two_processes_train_as_one_with_the_same_global_batch(one_process, two_processes, method, steps):
    strategy, root = two_processes
    assert train_steps(root / method)[1]["grad_norm"] > CLIP[method], "clipping is not exercised"
    assert_same_run(one_process / method, root / method, range(1, steps + 1))
    last = list_checkpoints(root / method)[-1]
    assert (last / "sharded").is_dir() == (strategy == "fsdp")
    assert read_trainer_state(last).weights_only == (method == "dpo") == (not (last / "scheduler.pt").is_file())


def test_a_run_cut_and_resumed_continues_exactly(two_processes):
    _, root = two_processes
    assert_same_run(root / "sft", root / "cut", range(1, 4))


def test_lean_memory_trains_on_every_engine(two_processes):
    """train.memory=lean on replicas and on shards (bf16 moments, checkpointing; the update after backward on several
    processes): the losses follow the standard run's closely."""
    _, root = two_processes
    config = yaml.safe_load((root / "lean" / "config.yaml").read_text())
    assert config["optim"]["state_dtype"] == "bfloat16" and not config["optim"]["update_in_backward"]
    standard, lean = train_steps(root / "sft"), train_steps(root / "lean")
    for step in (2, 3):
        assert lean[step]["loss"] == pytest.approx(standard[step]["loss"], rel=1e-2)


@pytest.mark.parametrize("two_processes", ["fsdp"], indirect=True)  # replicated checkpoints hold whole weights
def test_a_two_process_run_resumes_as_one_process_and_exports(one_process, two_processes, tmp_path):
    _, root = two_processes
    train(load_config(None, sft(root, "half", 4, 3)))  # the same global batch on one process
    assert_same_run(one_process / "sft", root / "half", range(1, 4))
    exported = export_checkpoint(list_checkpoints(root / "half")[-1], tmp_path / "export")
    for name, tensor in final_weights(one_process / "sft").items():
        torch.testing.assert_close(load_file(exported / "model.safetensors")[name], tensor, rtol=1e-4, atol=1e-5)
    # a pipeline stage that starts from a sharded run gets its weights exported once
    stage_start = pipeline.final_weights(root / "sft")
    assert stage_start.name == "step-3-model" and pipeline.final_weights(root / "sft") == stage_start
    for name, tensor in final_weights(one_process / "sft").items():
        torch.testing.assert_close(load_file(stage_start / "model.safetensors")[name], tensor, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------- without launching


def test_the_strategy_follows_the_launch():
    from posttrain.errors import ConfigError
    from posttrain.trainers.parallel import resolve_strategy

    assert resolve_strategy("fsdp", 1) == "single"
    assert resolve_strategy("auto", 2, {}) == "ddp"
    assert resolve_strategy("auto", 2, {"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    assert resolve_strategy("ddp", 2, {"ACCELERATE_USE_FSDP": "true"}) == "ddp"
    with pytest.raises(ConfigError, match="DeepSpeed"):
        resolve_strategy("auto", 2, {"ACCELERATE_USE_DEEPSPEED": "true"})


def test_passes_are_halved_until_every_process_has_as_many():
    from posttrain.data import micro_batches

    lengths = [50, 10, 40, 12, 11]
    assert len(micro_batches(list(range(5)), lengths, 8, token_budget=100)) == 2  # [0, 2], [3, 4, 1]
    parts = micro_batches(list(range(5)), lengths, 8, token_budget=100, min_parts=4)
    assert len(parts) == 4 and sorted(i for part in parts for i in part) == list(range(5))
    assert len(micro_batches(list(range(2)), [5, 5], 8, min_parts=4)) == 2  # no more passes than items


def test_a_checkpoint_index_that_would_run_code_is_refused(tmp_path):
    import pickle

    from posttrain.errors import CheckpointError
    from posttrain.models.sharded import check_metadata

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    (tmp_path / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="more than a checkpoint index"):
        check_metadata(tmp_path, fix="x")
    assert not (tmp_path / "owned").exists()


def test_resuming_on_another_launch_says_what_fits(tmp_path):
    from posttrain.errors import ConfigError
    from posttrain.trainers.checkpoint import TrainerState
    from posttrain.trainers.resume import check_processes

    state = TrainerState(step=2, data={}, seed=0, world_size=2, examples_per_step=8)
    check_processes(state, tmp_path, world_size=1, examples_per_step=8, sharded=False)
    with pytest.raises(ConfigError, match="batch_size × grad_accum × processes = 8"):
        check_processes(state, tmp_path, world_size=4, examples_per_step=16, sharded=False)
    with pytest.raises(ConfigError, match="holds whole weights"):
        check_processes(state, tmp_path, world_size=2, examples_per_step=8, sharded=True)


@pytest.mark.parametrize("engine", ["vllm", "server"])
def test_an_engine_that_needs_whole_weights_is_refused_under_fsdp(tmp_path, engine):
    from types import SimpleNamespace

    from posttrain.errors import ConfigError
    from posttrain.trainers.rollouts import rollout_engine

    extra = ["rollout.server_url=http://127.0.0.1:1"] if engine == "server" else []
    config = load_config(None, rl_overrides(tmp_path, "refused", f"rollout.engine={engine}", *extra))
    with pytest.raises(ConfigError, match="no process holds them"):
        rollout_engine(config, None, None, SimpleNamespace(lockstep=True))
