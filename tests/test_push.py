"""``posttrain model push``: the folder it prepares (safetensors, tokenizer, model card), the hub calls it makes
(HfApi replaced: no network), and a failed upload reported with the ready folder and how to retry."""

from __future__ import annotations

import json
import sys

import httpx
import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file

from posttrain import cli
from posttrain.config import dump_config
from posttrain.models import load_model, save_model, tiny_model, tiny_tokenizer
from posttrain.models.card import posttrain_version
from tests.helpers import tiny_config

REPO = "someone/tiny-sft"


@pytest.fixture
def checkpoint(tmp_path):
    """A run directory with config.yaml, metrics.jsonl (evaluations at steps 0, 2 and 4) and checkpoint step-2."""
    config = tiny_config(tmp_path, "pushme", **{"optim.lr": 3e-4, "sft.loss": "dft"})
    run_dir = config.run_dir
    checkpoint_dir = run_dir / "checkpoints" / "step-2"
    model = tiny_model(seed=3)
    save_model(model, tiny_tokenizer(), checkpoint_dir / "model")
    (run_dir / "config.yaml").write_text(dump_config(config))
    records = [{"step": 0, "eval/accuracy": 0.125}, {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
               {"step": 2, "eval/accuracy": 0.25}, {"step": 4, "eval/accuracy": 0.5}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return checkpoint_dir, model


def run_posttrain(monkeypatch, *args: str) -> int:
    """``posttrain ARGS`` in this process; its exit status."""
    monkeypatch.setattr(sys, "argv", ["posttrain", *args])
    with pytest.raises(SystemExit) as done:
        cli.main()
    return done.value.code


class RecordingApi:
    """Stands in for ``huggingface_hub.HfApi``: records each call; ``fail`` is raised by ``create_repo``."""

    calls: list = []
    fail: Exception | None = None

    def __init__(self, token=None):
        self.calls.append(("HfApi", {"token": token}))

    def create_repo(self, repo_id, **options):
        self.calls.append(("create_repo", {"repo_id": repo_id, **options}))
        if self.fail is not None:
            raise self.fail
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **options):
        self.calls.append(("create_branch", {"repo_id": repo_id, **options}))

    def upload_folder(self, **options):
        self.calls.append(("upload_folder", {**options, "files": sorted(p.name for p in options["folder_path"].iterdir())}))
        return f"https://huggingface.co/{options['repo_id']}/commit/abc"


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr("huggingface_hub.HfApi", RecordingApi)
    monkeypatch.setattr(RecordingApi, "calls", [])
    monkeypatch.setattr(RecordingApi, "fail", None)
    return RecordingApi


def test_dry_run_prepares_safetensors_tokenizer_and_a_model_card_and_uploads_nothing(checkpoint, hub, monkeypatch,
                                                                                       capsys):
    checkpoint_dir, model = checkpoint
    assert run_posttrain(monkeypatch, "model", "push", str(checkpoint_dir), REPO, "--dry-run") == 0
    folder = checkpoint_dir.parent.parent / "hub" / "step-2"
    assert hub.calls == []
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (folder / name).is_file(), name
    weights, state = load_file(folder / "model.safetensors"), model.state_dict()
    assert weights and set(weights) <= set(state)
    for name, tensor in weights.items():
        assert torch.equal(tensor, state[name]), name
    assert torch.allclose(load_model(folder, device="cpu").lm_head.weight, model.lm_head.weight)
    out = capsys.readouterr().out
    assert f"would upload {folder} to {REPO}, branch main" in out and "model.safetensors" in out

    card = (folder / "README.md").read_text()
    assert "base_model: tiny-random" in card and "- sft" in card
    assert f"posttrain {posttrain_version()}" in card
    assert "| optim.lr | `0.0003` |" in card and "| sft.loss | `dft` |" in card and "| train.batch_size | `4` |" in card
    assert "| accuracy | 0.125 (step 0) | 0.25 (step 2) |" in card  # up to the checkpoint: step 4 is left out
    assert f"AutoModelForCausalLM.from_pretrained({REPO!r})" in card


def test_push_creates_the_repository_and_branch_and_uploads_the_folder_once_prepared(checkpoint, hub, monkeypatch,
                                                                                       capsys):
    checkpoint_dir, _ = checkpoint
    folder = checkpoint_dir.parent.parent / "hub" / "step-2"
    assert run_posttrain(monkeypatch, "model", "push", str(checkpoint_dir), REPO, "--dry-run") == 0
    exported_at = (folder / "model.safetensors").stat().st_mtime_ns
    assert run_posttrain(monkeypatch, "model", "push", str(checkpoint_dir), "someone/other", "--private",
                         "--revision", "dev", "--token", "hf_secret") == 0
    assert (folder / "model.safetensors").stat().st_mtime_ns == exported_at  # reused, not exported again
    assert "from_pretrained('someone/other')" in (folder / "README.md").read_text()  # the card names the new repo
    assert [name for name, _ in hub.calls] == ["HfApi", "create_repo", "create_branch", "upload_folder"]
    assert hub.calls[0][1] == {"token": "hf_secret"}
    assert hub.calls[1][1] == {"repo_id": "someone/other", "private": True, "exist_ok": True}
    assert hub.calls[2][1] == {"repo_id": "someone/other", "branch": "dev", "exist_ok": True}
    upload = hub.calls[3][1]
    assert upload["repo_id"] == "someone/other" and upload["folder_path"] == folder and upload["revision"] == "dev"
    assert upload["commit_message"] == "posttrain: pushme/step-2"
    assert {"model.safetensors", "README.md", "config.json"} <= set(upload["files"])
    out = capsys.readouterr().out
    assert "pushed" in out and "someone/other/commit/abc" in out and "hf_secret" not in out


def test_without_network_the_push_fails_clearly_and_names_the_ready_folder(checkpoint, hub, monkeypatch, capsys):
    checkpoint_dir, _ = checkpoint
    folder = checkpoint_dir.parent.parent / "hub" / "step-2"
    hub.fail = httpx.ConnectError("[Errno -3] Temporary failure in name resolution")
    assert run_posttrain(monkeypatch, "model", "push", str(checkpoint_dir), REPO) == 2
    err = capsys.readouterr().err
    assert f"uploading to the Hugging Face Hub repository {REPO} failed: [Errno -3] Temporary failure" in err
    assert f"the folder is ready at {folder}" in err and "run the same command again" in err
    assert "check the network" in err and "Traceback" not in err
    assert (folder / "model.safetensors").is_file()
    assert [name for name, _ in hub.calls] == ["HfApi", "create_repo"]

    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    hub.fail = HfHubHTTPError("401 Unauthorized", response=httpx.Response(401, request=request))
    assert run_posttrain(monkeypatch, "model", "push", str(checkpoint_dir), REPO) == 2
    assert "give a token with write access (--token, or HF_TOKEN" in capsys.readouterr().err


def test_a_bad_repository_id_is_refused_before_any_export(checkpoint, hub, monkeypatch, capsys):
    checkpoint_dir, _ = checkpoint
    assert run_posttrain(monkeypatch, "model", "push", str(checkpoint_dir), "a/b/c") == 2
    assert "is not a Hugging Face Hub repository id" in capsys.readouterr().err
    assert not (checkpoint_dir.parent.parent / "hub").exists() and hub.calls == []
