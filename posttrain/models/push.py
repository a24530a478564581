"""``posttrain model push``: a checkpoint to the Hugging Face Hub as a merged safetensors model with a model card.

:func:`prepare_push_folder` exports ``RUN/checkpoints/step-N`` (:func:`~posttrain.models.saving.export_checkpoint`:
any LoRA merged, FSDP shards gathered, fp32 safetensors, tokenizer, a README.md card whose usage snippet loads the
hub repository) into a folder, by default ``RUN/hub/step-N``. The export writes that folder whole or not at all, so
a folder already there is reused (only its card is written again, for the repository now named): a failed upload is
retried with the same command without exporting again. :func:`upload_push_folder` then creates the repository
(``exist_ok``, ``private`` when asked; an existing repository keeps its visibility), the branch ``revision`` when
one is given, and uploads the folder in one commit. The token is ``token``, else huggingface_hub's own
(``HF_TOKEN``, or the one `hf auth login` stored). A failure (no network, a refused token) is an
:class:`UploadError` that says what failed, that the folder is ready, and how to retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import ConfigError, UploadError, first_line
from posttrain.models.saving import checkpoint_card, checkpoint_model_dir, export_checkpoint

HUB_FOLDER = "hub"
CARD_FILE = "README.md"
AUTH_STATUSES = (401, 403)


@dataclass(frozen=True)
class PushTarget:
    repo_id: str
    private: bool = False
    revision: str | None = None
    token: str | None = None


def check_repo_id(repo_id: str) -> None:
    """A :class:`ConfigError` unless ``repo_id`` is a valid hub repository id (``name`` or ``owner/name``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ConfigError(f"{repo_id!r} is not a Hugging Face Hub repository id: {first_line(error)}",
                          where="REPO_ID", fix="name it owner/name, e.g. my-user/smollm2-sft") from None


def default_push_folder(checkpoint_dir: Path) -> Path:
    """``RUN/hub/step-N`` for checkpoint ``RUN/checkpoints/step-N``."""
    return checkpoint_dir.parent.parent / HUB_FOLDER / checkpoint_dir.name


def prepare_push_folder(checkpoint_dir: str | Path, repo_id: str, folder: str | Path | None = None) -> Path:
    """The folder to upload for ``checkpoint_dir`` (see the module docstring); exported unless already there."""
    check_repo_id(repo_id)
    checkpoint_dir = Path(checkpoint_dir).resolve()
    checkpoint_model_dir(checkpoint_dir)
    folder = Path(folder).resolve() if folder else default_push_folder(checkpoint_dir)
    if not (folder / "config.json").is_file():
        return export_checkpoint(checkpoint_dir, folder, load_from=repo_id)
    (folder / CARD_FILE).write_text(checkpoint_card(checkpoint_dir, repo_id), encoding="utf-8")
    return folder


def folder_files(folder: Path) -> list[tuple[str, int]]:
    """The files an upload of ``folder`` sends, as ``(relative path, bytes)``."""
    return [(str(path.relative_to(folder)), path.stat().st_size) for path in sorted(folder.rglob("*"))
            if path.is_file()]


def upload_push_folder(folder: Path, target: PushTarget, commit_message: str) -> str:
    """Upload ``folder`` to ``target``; the URL of the commit."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi(token=target.token)
    try:
        api.create_repo(target.repo_id, private=target.private, exist_ok=True)
        if target.revision:
            api.create_branch(target.repo_id, branch=target.revision, exist_ok=True)
        commit = api.upload_folder(repo_id=target.repo_id, folder_path=folder, revision=target.revision,
                                   commit_message=commit_message)
    except (OSError, httpx.HTTPError) as error:  # huggingface_hub's HTTP errors are OSErrors; httpx's are not
        status = getattr(getattr(error, "response", None), "status_code", None)
        refused = isinstance(error, LocalTokenNotFoundError) or (
            isinstance(error, HfHubHTTPError) and status in AUTH_STATUSES)
        cause = ("give a token with write access (--token, or HF_TOKEN, or `hf auth login`)" if refused
                 else "check the network (and HF_HUB_OFFLINE, which must be unset)")
        revision = f" --revision {target.revision}" if target.revision else ""
        raise UploadError(
            f"uploading to the Hugging Face Hub repository {target.repo_id} failed: {first_line(error)}; the "
            f"folder is ready at {folder}", where=target.repo_id,
            fix=f"{cause}, then run the same command again (it reuses the folder), or upload the folder "
                f"yourself: `hf upload {target.repo_id} {folder} .{revision}`") from error
    return str(getattr(commit, "commit_url", commit))
