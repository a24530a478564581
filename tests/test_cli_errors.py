"""Mistakes on the command line and in names: short messages, status 2, no traceback, no minute-long waits.

- usage mistakes (unknown option or command, missing or malformed value) through the real entry point;
- hub names that cannot be had (offline mode, an unreachable hub) fail fast; cached ones still load;
- paths in a recipe resolve against the recipe's folder, command-line overrides against the working directory.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import torch

from posttrain.errors import DataError, ModelError
from tests.helpers import posttrain_command

# ------------------------------------------------------------------------------------------- usage mistakes

USAGE_MISTAKES = {
    "train": (["train", "--modle", "x"], "has no option --modle"),
    "data-missing-option": (["data", "make", "arithmetic"], "--out"),
    "data-not-an-int": (["data", "make", "arithmetic", "--out", "f.jsonl", "--n", "abc"], "'--n'"),
    "unknown-command": (["trian"], "trian"),
    "unknown-sub-command": (["data", "mkae"], "mkae"),
    "model": (["model", "info", "--nmae", "x"], "--nmae"),
    "eval": (["eval", "math", "--modle", "x"], "--model"),
    "bench": (["bench", "sft", "--vss", "trl"], "--vs"),
    "judge": (["judge", "synthesize", "--pairs", "task:arithmetic"], "--judge"),
    "sweep": (["sweep", "recipe.yaml"], "--grid"),
    "pipeline": (["pipeline"], "'file'"),
    "generate": (["generate", "--modle", "x", "--prompt", "hi"], "--model"),
}


def run_posttrain(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(posttrain_command(*args), capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("case", list(USAGE_MISTAKES))
def test_a_usage_mistake_is_a_short_message_with_status_2(case, tmp_path):
    args, named = USAGE_MISTAKES[case]
    done = run_posttrain(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, done.stderr
    assert lines[0].startswith("error: ")
    if named:
        assert named in lines[0]


def test_a_mistyped_option_gets_the_suggestion():
    done = run_posttrain("generate", "--modle", "x", "--prompt", "hi")
    assert "--modle" in done.stderr and "Possible options: --model" in done.stderr
    assert "generate --help`" in done.stderr


@pytest.mark.parametrize("args", [["--help"], ["data", "make", "--help"], ["eval", "math", "--help"]])
def test_help_exits_0(args):
    done = run_posttrain(*args)
    assert done.returncode == 0 and "Usage" in done.stdout and "Traceback" not in done.stderr


def test_a_bug_still_shows_its_traceback_and_an_abort_exits_1(monkeypatch, capsys):
    import typer

    from posttrain import cli

    def failing(error):
        def app(standalone_mode):
            raise error
        return app

    monkeypatch.setattr(cli, "app", failing(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main()
    monkeypatch.setattr(cli, "app", failing(typer.Abort()))
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1 and "aborted" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ hub names


@pytest.fixture
def no_offline_mode(monkeypatch):
    """Offline mode off (the test settings switch it on), so the hub probe runs; each test probes afresh."""
    import huggingface_hub.constants

    from posttrain import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub._endpoint_answers.cache_clear()
    yield
    hub._endpoint_answers.cache_clear()


@pytest.fixture
def unreachable_hub(no_offline_mode, monkeypatch):
    """A hub endpoint that accepts connections but never answers (a local socket nobody reads); its address."""
    import huggingface_hub.constants

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    address = silent.getsockname()[:2]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://{address[0]}:{address[1]}")
    yield address
    silent.close()


@pytest.fixture
def connections(monkeypatch):
    """Every network connection this process opens from here on, as ``(host, port)``: "fails at once" means
    no connection beyond the one bounded probe (counting them does not depend on how busy the machine is)."""
    opened = []
    connect = socket.socket.connect

    def recorded(sock, address):
        opened.append(address[:2] if isinstance(address, tuple) else address)
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", recorded)
    return opened


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local hub cache in a temporary directory."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_snapshot(cache, repo_folder: str):
    """Lay out ``repo_folder`` (``models--org--name``) in a hub cache as a download would: refs/main, snapshot."""
    commit = "0" * 40
    (cache / repo_folder / "refs").mkdir(parents=True)
    (cache / repo_folder / "refs" / "main").write_text(commit)
    snapshot = cache / repo_folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def test_an_unreachable_hub_model_name_is_a_model_error_after_one_bounded_probe(unreachable_hub, hub_cache,
                                                                                connections):
    from posttrain.models import load_model, load_tokenizer

    with pytest.raises(ModelError) as raised:
        load_model("nobody-here/no-such-model", device="cpu")
    message = str(raised.value)
    assert "taken as a Hugging Face hub model name" in message and "cannot be reached" in message
    assert "local Hugging Face model directory" in raised.value.fix and "hf download" in raised.value.fix
    with pytest.raises(ModelError, match="cannot be reached"):
        load_tokenizer("nobody-here/no-such-model")
    # the probe (bounded: test_the_probe_is_bounded_even_if_the_lookup_hangs) is the only connection, made once
    # per process; no library got to retry
    assert connections == [unreachable_hub]


def test_this_machine_without_network_fails_on_a_hub_name_after_one_probe(no_offline_mode, hub_cache, monkeypatch):
    """The real endpoint: without network (as here) the probe finds no answer; with network the hub says 404."""
    from posttrain import hub
    from posttrain.models import load_model

    probes = []
    probe = hub._head_answers
    monkeypatch.setattr(hub, "_head_answers", lambda endpoint: probes.append(endpoint) or probe(endpoint))
    with pytest.raises(ModelError, match="hub"):
        load_model("nobody-here/no-such-model", device="cpu")
    assert len(probes) == 1


def test_offline_mode_hub_names_fail_without_touching_the_network(monkeypatch, hub_cache, connections):
    from posttrain.data import read_records
    from posttrain.models import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline mode is set") as raised:
        load_model("nobody-here/no-such-model", device="cpu")
    assert "unset offline mode" in raised.value.fix
    with pytest.raises(DataError, match="offline mode is set") as raised:
        read_records("nobody-here/no-such-data:main")
    assert raised.value.where == "nobody-here/no-such-data:main" and "save_to_disk" in raised.value.fix
    assert connections == []


def test_a_cached_hub_model_loads_offline_and_without_network(unreachable_hub, hub_cache, monkeypatch, connections):
    from posttrain.models import load_model, load_tokenizer, tiny_model, tiny_tokenizer

    snapshot = cache_snapshot(hub_cache, "models--someone--cached-tiny")
    tiny_model().save_pretrained(snapshot)
    tiny_tokenizer().save_pretrained(snapshot)
    expected = tiny_model()(torch.tensor([[5, 6, 7]])).logits
    for offline, probed in (("1", []), ("0", [unreachable_hub])):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        model = load_model("someone/cached-tiny", device="cpu", dtype="float32")
        tokenizer = load_tokenizer("someone/cached-tiny")
        assert connections == probed  # offline: none; online: the one probe, and the cache serves the files
        assert model.name_or_path == "someone/cached-tiny"
        assert tokenizer.decode(tokenizer("2+2")["input_ids"]) == "2+2"
        torch.testing.assert_close(model(torch.tensor([[5, 6, 7]])).logits, expected)


def test_a_cached_hub_dataset_reads_without_network(unreachable_hub, hub_cache, connections):
    from posttrain.data import read_records

    snapshot = cache_snapshot(hub_cache, "datasets--someone--cached-data")
    (snapshot / "train.jsonl").write_text('{"prompt": "1+1?", "completion": "2"}\n')
    records = read_records("someone/cached-data")
    assert [record["completion"] for record in records] == ["2"]
    assert connections == []  # the test settings switch datasets' own offline mode on, which skips the probe


def test_the_probe_is_bounded_even_if_the_lookup_hangs(monkeypatch):
    """A name lookup that hangs for 30 s: the probe gives up after PROBE_SECONDS (a wide margin for a busy host)."""
    from posttrain import hub

    monkeypatch.setattr(hub, "_head_answers", lambda endpoint: time.sleep(30) or True)
    hub._endpoint_answers.cache_clear()
    started = time.perf_counter()
    try:
        assert not hub._endpoint_answers("http://hangs.invalid")
    finally:
        hub._endpoint_answers.cache_clear()
    assert time.perf_counter() - started < hub.PROBE_SECONDS + 10


# ------------------------------------------------------------------------------------------- recipe paths

REWARDS_FILE = "def score(prompt, completion, record):\n    return float(len(completion))\n"


@pytest.fixture
def recipe_folder(tmp_path):
    """``recipes/r.yaml`` reading ``recipes/data/train.jsonl`` with a reward in ``recipes/rewards.py``, and an
    empty working directory elsewhere."""
    folder = tmp_path / "recipes"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text('{"prompt": "1+1?", "completion": "2"}\n' * 8)
    (folder / "rewards.py").write_text(REWARDS_FILE)
    (folder / "r.yaml").write_text(
        "name: paths\noutput_dir: runs\nmethod: grpo\nmodel: {name: tiny-random}\n"
        "data: {train: {path: data/train.jsonl}, max_length: 64}\n"
        "rl: {rewards: {functions: [{path: rewards.py:score}, {name: judge, args: {model: scripted}}]}}\n"
        "train: {batch_size: 4, max_steps: 1, eval_at_start: false}\neval: {kind: none}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return folder


def test_paths_in_a_recipe_are_relative_to_its_folder(recipe_folder, monkeypatch):
    from posttrain.config import load_config
    from posttrain.rewards import load_reward_function

    monkeypatch.chdir(recipe_folder.parent / "elsewhere")
    config = load_config(recipe_folder / "r.yaml")
    assert config.data.train.path == str(recipe_folder / "data" / "train.jsonl")
    reward_path = config.rl.rewards.functions[0].path
    assert reward_path == f"{recipe_folder / 'rewards.py'}:score"
    assert load_reward_function(reward_path)("p", "abc", {}) == 3.0
    assert config.rl.rewards.functions[1].args == {"model": "scripted"}  # a name, not a path
    assert config.model.name == "tiny-random" and config.output_dir == "runs" and config.train.resume == "auto"


def test_a_missing_file_is_named_in_the_folder_of_the_file_that_names_it(recipe_folder, monkeypatch):
    from posttrain.config import load_config

    monkeypatch.chdir(recipe_folder.parent / "elsewhere")
    recipe = recipe_folder / "r.yaml"
    recipe.write_text(recipe.read_text().replace("data/train.jsonl", "data/not-yet.jsonl"))
    assert load_config(recipe).data.train.path == str(recipe_folder / "data" / "not-yet.jsonl")
    pipeline_folder = recipe_folder.parent / "pipelines"  # a pipeline passes its folder for the overrides it holds
    config = load_config(recipe, ["data.train.path=made.jsonl"], overrides_dir=pipeline_folder)
    assert config.data.train.path == str(pipeline_folder / "made.jsonl")


def test_overrides_are_relative_to_the_working_directory(recipe_folder, monkeypatch):
    from posttrain.config import load_config

    here = recipe_folder.parent / "elsewhere"
    (here / "mine.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (here / "my_rewards.py").write_text(REWARDS_FILE)
    monkeypatch.chdir(here)
    config = load_config(recipe_folder / "r.yaml", [
        "data.train.path=mine.jsonl", "rl.rewards={functions: [{path: my_rewards.py:score}]}"])
    assert config.data.train.path == str(here / "mine.jsonl")
    assert config.rl.rewards.functions[0].path == f"{here / 'my_rewards.py'}:score"


def test_model_names_stay_names_unless_they_are_paths(recipe_folder, monkeypatch):
    from posttrain.config import load_config

    (recipe_folder / "my-model").mkdir()
    monkeypatch.chdir(recipe_folder.parent / "elsewhere")
    recipe = recipe_folder / "r.yaml"
    assert load_config(recipe, ["model.name=someone/some-model"]).model.name == "someone/some-model"
    assert load_config(recipe, ["model.name=smollm2-135m"]).model.name == "smollm2-135m"
    recipe.write_text(recipe.read_text().replace("tiny-random", "my-model"))
    assert load_config(recipe).model.name == str(recipe_folder / "my-model")
    recipe.write_text(recipe.read_text().replace("my-model", "./gone"))
    assert load_config(recipe).model.name == str(recipe_folder / "gone")


def test_output_dir_placeholder_names_files_under_the_runs(recipe_folder, monkeypatch):
    from posttrain.config import load_config

    here = recipe_folder.parent / "elsewhere"
    monkeypatch.chdir(here)
    recipe = recipe_folder / "r.yaml"
    recipe.write_text(recipe.read_text().replace("path: data/train.jsonl", 'path: "${output_dir}/prev/out.jsonl"'))
    assert load_config(recipe).data.train.path == str(here / "runs" / "prev" / "out.jsonl")
    moved = load_config(recipe, ["output_dir=other"])
    assert moved.data.train.path == str(here / "other" / "prev" / "out.jsonl") and moved.output_dir == "other"


def test_a_run_from_another_directory_writes_absolute_paths_that_load_anywhere(recipe_folder, tmp_path):
    from posttrain.config import load_config

    here = recipe_folder.parent / "elsewhere"
    recipe = recipe_folder / "r.yaml"  # an SFT run: the rl section is another method's setting, an error there
    recipe.write_text("".join(line for line in recipe.read_text().splitlines(keepends=True)
                              if not line.startswith(("method:", "rl:"))))
    done = run_posttrain("train", str(recipe), cwd=here)
    assert done.returncode == 0, done.stderr
    written = here / "runs" / "paths" / "config.yaml"
    config = load_config(written)
    assert config.data.train.path == str(recipe_folder / "data" / "train.jsonl")
    assert load_config(written, overrides_dir=tmp_path) == config


def test_shipped_pipelines_point_their_stages_at_the_pipeline_output(monkeypatch, tmp_path):
    from pathlib import Path

    from posttrain.config import load_config
    from posttrain.trainers.pipeline import load_pipeline, stage_overrides

    monkeypatch.chdir(tmp_path)
    path = Path(__file__).resolve().parents[1] / "posttrain" / "recipes" / "rise_judge" / "pipeline.yaml"
    pipeline = load_pipeline(path)
    stages = {stage.name: stage for stage in pipeline.stages}
    config = load_config(path.parent / "sft.yaml", stage_overrides(pipeline, stages["sft"]), overrides_dir=path.parent)
    assert config.data.train.path == str(tmp_path / "runs" / "rise-judge" / "synth-base" / "sft.jsonl")
    standalone = load_config(path.parent / "sft.yaml")
    assert standalone.data.train.path == config.data.train.path  # the recipe alone reads the same file


def test_pipeline_tool_arguments_resolve_against_the_pipeline_folder(tmp_path):
    from posttrain.trainers.pipeline import tool_arguments

    (tmp_path / "pairs.jsonl").write_text("")
    args = tool_arguments({"pairs": "pairs.jsonl", "judge": "critique", "data": "task:arithmetic", "n": 3,
                           "template": "${output_dir}/t.txt"}, tmp_path / "runs", tmp_path)
    assert args == {"pairs": str(tmp_path / "pairs.jsonl"), "judge": "critique", "data": "task:arithmetic", "n": 3,
                    "template": str(tmp_path / "runs" / "t.txt")}
