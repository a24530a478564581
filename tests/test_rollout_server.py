"""Server mode: `posttrain rollout serve` in a real process, sampled and weight-synced over gloo by RemoteEngine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from posttrain.errors import ConfigError, DataError, ModelError, PosttrainError
from posttrain.models import load_model, tiny_model, tiny_tokenizer
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.rollout.remote import RemoteEngine
from posttrain.rollout.wire import RolloutServerError

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [[1, 4 + ord("a"), 4 + ord("b")], [1, 4 + ord("x")], [1, 4 + ord("q"), 4 + ord("r"), 4 + ord("s")]]
GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("served-model")
    tiny_model(seed=3, tie_word_embeddings=True).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """One server process for the module: (RemoteEngine, the Popen, its log file)."""
    port = free_port()
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "posttrain.cli", "rollout", "serve", "--model", str(model_dir), "--engine", "hf",
             "--port", str(port), "--batch-size", "4"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    remote = RemoteEngine(f"http://127.0.0.1:{port}", timeout_s=60)
    try:
        remote.wait_ready(timeout_s=60, process=process)
        yield remote, process, log
    finally:
        try:
            remote.close(stop_server=True)
            process.wait(timeout=15)
        except (PosttrainError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()


def local_engine(model) -> HFEngine:
    return HFEngine(model, tiny_tokenizer(), batch_size=4)


def assert_same_generations(remote, local) -> None:
    assert len(remote) == len(local)
    for theirs, ours in zip(remote, local, strict=True):
        assert (theirs.prompt_index, theirs.sample_index, theirs.token_ids, theirs.finish_reason, theirs.text) == (
            ours.prompt_index, ours.sample_index, ours.token_ids, ours.finish_reason, ours.text)
        assert theirs.logprobs == pytest.approx(ours.logprobs, abs=1e-4)


def test_health_names_the_model_and_engine(server, model_dir):
    remote, _, _ = server
    health = remote.health()
    assert health["status"] == "ok" and health["engine"] == "hf" and health["model"] == str(model_dir)
    assert health["world"]["rank"] == 1 and health["world"]["world_size"] == 2
    assert health["device"] == "cpu"


def test_remote_greedy_equals_local_engine_on_the_same_weights(server, model_dir):
    remote, _, _ = server
    model = load_model(model_dir, device="cpu")
    if remote.health()["weights_version"]:  # another test synced other weights: put the saved ones back
        remote.sync_from(model)
    assert_same_generations(remote.generate(PROMPTS, GREEDY), local_engine(model).generate(PROMPTS, GREEDY))
    sampled = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=8, n=2, seed=5)
    assert_same_generations(remote.generate(PROMPTS, sampled), local_engine(model).generate(PROMPTS, sampled))


def test_sync_from_makes_the_server_follow_perturbed_weights(server, model_dir):
    remote, _, _ = server
    model = load_model(model_dir, device="cpu")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    before = remote.generate(PROMPTS, GREEDY)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():  # every parameter, the tied embedding once
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    version = remote.health()["weights_version"]
    remote.sync_from(model)
    assert remote.health()["weights_version"] == version + 1
    after = remote.generate(PROMPTS, GREEDY)
    assert [g.logprobs for g in after] != [g.logprobs for g in before]
    assert_same_generations(after, local_engine(model).generate(PROMPTS, GREEDY))
    assert remote.last_sync_seconds is not None and remote.last_sync_seconds < 30


def test_grpo_like_rounds_keep_the_server_on_the_learners_weights(server, model_dir):
    remote, _, _ = server
    model = load_model(model_dir, device="cpu")
    remote.sync_from(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    target = 4 + ord("a")
    start = local_engine(model).generate(PROMPTS, GREEDY)
    for step in range(3):
        params = SamplingParams(temperature=1.0, max_new_tokens=6, n=4, seed=step)
        rollouts = remote.generate(PROMPTS, params)
        assert_same_generations(rollouts, local_engine(model).generate(PROMPTS, params))
        rewards = torch.tensor([g.token_ids.count(target) / len(g.token_ids) for g in rollouts])
        advantages = rewards - rewards.mean()
        model.train()
        loss = torch.zeros(())
        for generation, advantage in zip(rollouts, advantages, strict=True):
            ids = torch.tensor([generation.prompt_ids + generation.token_ids])
            logits = model(input_ids=ids).logits[0, len(generation.prompt_ids) - 1 : -1]
            logprobs = logits.log_softmax(-1).gather(-1, ids[0, len(generation.prompt_ids):, None]).sum()
            loss = loss - advantage * logprobs - 0.05 * logprobs  # a push towards the samples, so weights move
        optimizer.zero_grad()
        (loss / len(rollouts)).backward()
        optimizer.step()
        model.eval()
        remote.sync_from(model)
        assert_same_generations(remote.generate(PROMPTS, GREEDY), local_engine(model).generate(PROMPTS, GREEDY))
    end = local_engine(model).generate(PROMPTS, GREEDY)
    moved = max(abs(a - b) for e, s in zip(end, start, strict=True) for a, b in zip(e.logprobs, s.logprobs, strict=True))
    assert moved > 1e-3  # the learner's weights did change, and the server followed them


def test_unreachable_server_names_the_url_and_the_fix():
    url = f"http://127.0.0.1:{free_port()}"
    remote = RemoteEngine(url, timeout_s=5)
    with pytest.raises(RolloutServerError) as caught:
        remote.generate(PROMPTS, GREEDY)
    message = str(caught.value)
    assert url in message and "posttrain rollout serve" in message
    with pytest.raises(ConfigError, match="not an http"):
        RemoteEngine("ftp://example.org")


def test_bad_requests_get_clear_errors_and_leave_the_server_working(server, model_dir):
    remote, process, log = server
    with pytest.raises(ConfigError, match="temperature"):
        remote.request("POST", "/generate", {"prompt_ids": [[1, 2]], "params": {"temperature": -1}})
    with pytest.raises(ConfigError, match="unknown sampling setting 'beams'"):
        remote.request("POST", "/generate", {"prompt_ids": [[1, 2]], "params": {"beams": 2}})
    with pytest.raises(DataError, match="prompt_ids"):
        remote.request("POST", "/generate", {"prompt_ids": "hello"})
    with pytest.raises(DataError, match="no tokens"):
        remote.generate([[]], GREEDY)
    with pytest.raises(RolloutServerError, match="no endpoint POST /nope"):
        remote.request("POST", "/nope", {})
    with pytest.raises(DataError, match="dtype"):
        remote.request("POST", "/weights/update", {"tensors": [{"name": "x", "shape": [1], "dtype": "object"}]})
    raw = urllib.request.Request(remote.url + "/generate", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(raw, timeout=10)
    assert caught.value.code == 400 and "not valid JSON" in json.loads(caught.value.read())["error"]["what"]

    # Weights the engine refuses are received, not applied, and the learner gets the engine's reason.
    model = load_model(model_dir, device="cpu")
    remote.sync_from(model)
    before = remote.generate(PROMPTS, GREEDY)
    with pytest.raises(ModelError, match="no parameter named 'model.not_a_layer.weight'"):
        remote.load_weights([("model.norm.weight", torch.zeros(64)), ("model.not_a_layer.weight", torch.zeros(3))])
    with pytest.raises(ModelError, match=r"shape \(64,\)"):
        remote.load_weights([("model.norm.weight", torch.zeros(65))])
    assert_same_generations(remote.generate(PROMPTS, GREEDY), before)  # nothing was half-applied
    assert process.poll() is None
    assert "Traceback" not in log.read_text()


def test_hf_engine_load_weights_checks_names_and_shapes_first():
    model = tiny_model(tie_word_embeddings=True)
    engine = HFEngine(model, tiny_tokenizer())
    embedding = model.get_input_embeddings().weight
    new = torch.ones_like(embedding)
    engine.load_weights([("lm_head.weight", new)])  # the tied alias works too
    assert torch.equal(model.get_input_embeddings().weight, new) and torch.equal(model.lm_head.weight, new)
    norm = model.model.norm.weight.detach().clone()
    with pytest.raises(ModelError, match="shape"):
        engine.load_weights([("model.norm.weight", torch.zeros_like(norm)), ("lm_head.weight", torch.zeros(2, 2))])
    assert torch.equal(model.model.norm.weight, norm)


def test_serve_with_an_unknown_engine_is_a_usage_error(model_dir):
    result = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "rollout", "serve", "--model", str(model_dir), "--engine", "nope"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert result.returncode == 2
    assert "unknown rollout engine 'nope'" in result.stderr and "Traceback" not in result.stderr



def test_sync_neither_needs_nor_touches_the_learners_default_group(server, model_dir):
    """A learner that is one rank of a torchrun-style job keeps its default group, and one without stays without."""
    import torch.distributed as dist

    remote, _, _ = server
    model = load_model(model_dir, device="cpu")
    remote.close()  # a fresh sync group, built while this process has a default group of its own
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        default = dist.group.WORLD
        remote.sync_from(model)
        assert dist.group.WORLD is default and dist.get_world_size() == 1
        total = torch.ones(2)
        dist.all_reduce(total)  # the default group still works
        assert total.tolist() == [1.0, 1.0]
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()
    remote.sync_from(model)  # the open sync group goes on working with no default group at all
    assert not dist.is_initialized()
    assert_same_generations(remote.generate(PROMPTS, GREEDY), local_engine(model).generate(PROMPTS, GREEDY))


def test_a_grpo_run_samples_from_the_server_and_pushes_its_weights_every_step(server, model_dir, tmp_path):
    """Three GRPO steps with ``rollout.engine=server``: the server's weights are the learner's before each rollout
    (its greedy output after the run equals the step-2 checkpoint's, the last weights a rollout used)."""
    from posttrain.trainers.run import train
    from tests.rl_helpers import rl_config

    remote, _, _ = server
    config = rl_config(tmp_path, "served", f"model.name={model_dir}", "rollout.engine=server",
                       f"rollout.server_url={remote.url}", "train.save_every=1", "train.keep_checkpoints=3")
    run_dir = train(config).run_dir
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == 3 and all(m["sync_seconds"] > 0 for m in steps)
    # a separate engine gets the behaviour correction; the same fp32 weights sample with the learner's log-probs
    assert all(m["engine_logprob_gap"] < 1e-4 and m["engine_corrected"] == 0 for m in steps)
    step_two = load_model(str(run_dir / "checkpoints" / "step-2" / "model"))
    assert_same_generations(remote.generate(PROMPTS, GREEDY), local_engine(step_two).generate(PROMPTS, GREEDY))
    initial = local_engine(load_model(str(model_dir))).generate(PROMPTS, GREEDY)
    assert [g.logprobs for g in initial] != [g.logprobs for g in remote.generate(PROMPTS, GREEDY)]
