"""Decide, quickly, whether a Hugging Face hub name can be loaded, before a library retries for a minute.

A model or dataset name that is no local path is taken as a hub repository. :func:`locate_hub_repo` returns
where to load it from:

- the repository id itself when the hub answers (the library downloads it, or uses its cache);
- the repository's snapshot directory in the local hub cache (``huggingface_hub.constants.HF_HUB_CACHE``)
  when offline mode is set (``HF_HUB_OFFLINE``) or the hub does not answer, so loading needs no network;
- otherwise it raises the caller's :class:`PosttrainError` subclass at once, saying the name was taken as
  a hub name, why the hub cannot provide it, and how to fix that.

Whether the hub answers is probed once per process and endpoint (``huggingface_hub.constants.ENDPOINT``):
one HEAD request through huggingface_hub's own HTTP client (so its proxy settings apply), given at most
:data:`PROBE_SECONDS`; any answer, even an error status, counts as reachable.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from posttrain.errors import PosttrainError

PROBE_SECONDS = 2.0
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
# extensions of the files posttrain reads; no hub id ends in one
FILE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".py", ".yaml", ".yml", ".txt")


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is clearly a local path and never a hub id (``name`` or ``owner/name``): it starts with
    ``.``, ``/`` or ``~``, has more than one ``/`` (or the OS's own separator), or ends in a file extension of
    :data:`FILE_SUFFIXES`."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or Path(name).suffix.lower() in FILE_SUFFIXES
    )


def offline_mode() -> bool:
    """Whether hub access is switched off: ``HF_HUB_OFFLINE`` set now, or when huggingface_hub was imported."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in TRUE_VALUES or bool(constants.HF_HUB_OFFLINE)


def cached_snapshot(repo_id: str, repo_type: str) -> Path | None:
    """The non-empty snapshot directory of ``repo_id``'s ``main`` revision in the local hub cache, if any."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    ref = storage / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = storage / "snapshots" / ref.read_text(encoding="utf-8").strip()
    return snapshot if snapshot.is_dir() and any(snapshot.iterdir()) else None


def hub_reachable() -> bool:
    """Whether the hub endpoint answers within :data:`PROBE_SECONDS` (probed once per process and endpoint)."""
    from huggingface_hub import constants

    return _endpoint_answers(constants.ENDPOINT)


@functools.cache
def _endpoint_answers(endpoint: str) -> bool:
    """Send one HEAD request to ``endpoint`` in a helper thread, so a slow name lookup cannot hold us longer."""
    answers: list[bool] = []
    probe = threading.Thread(target=lambda: answers.append(_head_answers(endpoint)), daemon=True)
    probe.start()
    probe.join(PROBE_SECONDS)
    return bool(answers and answers[0])


def _head_answers(endpoint: str) -> bool:
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=PROBE_SECONDS)
    except Exception:  # noqa: BLE001 - the HTTP client's errors (name lookup, connect, timeout, TLS) all mean "no answer"
        return False
    return True


def locate_hub_repo(
    repo_id: str,
    *,
    repo_type: str,
    error_type: type[PosttrainError],
    local_alternative: str,
    where: str | None = None,
    offline: bool = False,
) -> str:
    """Where to load hub repository ``repo_id`` (``repo_type`` ``model`` or ``dataset``) from; see the module
    docstring. ``offline=True`` adds the caller's own offline switch (e.g. ``HF_DATASETS_OFFLINE``) to
    :func:`offline_mode`. When the repository cannot be had, raises ``error_type`` at ``where`` whose fix names
    ``local_alternative`` (what to pass instead) and how to put the repository into the cache."""
    snapshot = cached_snapshot(repo_id, repo_type)
    switched_off = offline or offline_mode()
    if not switched_off and hub_reachable():
        return repo_id
    if snapshot is not None:
        return str(snapshot)
    raise _unavailable(repo_id, repo_type, error_type, local_alternative, where, switched_off)


def _unavailable(repo_id: str, repo_type: str, error_type: type[PosttrainError], local_alternative: str,
                 where: str | None, switched_off: bool) -> PosttrainError:
    from huggingface_hub import constants

    if switched_off:
        reason = "offline mode is set (HF_HUB_OFFLINE)"
        network = "unset offline mode, or download it"
    else:
        reason = f"the hub {constants.ENDPOINT} cannot be reached (no network?)"
        network = "download it"
    download = f"hf download {'--repo-type dataset ' if repo_type == 'dataset' else ''}{repo_id}"
    return error_type(
        f"'{repo_id}' is no local path, so it was taken as a Hugging Face hub {repo_type} name, and the hub "
        f"could not provide it: {reason} and it is not in the local cache {constants.HF_HUB_CACHE}",
        where=where,
        fix=f"pass {local_alternative}; or {network} once on a machine with network (`{download}`) into that "
        "cache (set HF_HOME or HF_HUB_CACHE to share one)",
    )
