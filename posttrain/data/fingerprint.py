"""Content fingerprints of data files, so a resumed run can tell that its data changed underneath it.

A file's fingerprint is its size and SHA-256; a directory's (an HF ``datasets`` folder, a folder of
shards) is the SHA-256 over its files' relative paths and digests, with the total size. A name that is
no local path (a hub dataset, a synthetic task) has no fingerprint: its content is fixed by its name,
revision and seed, which the run's config records.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def path_fingerprint(path: str | Path) -> dict | None:
    """``{"bytes": total size, "sha256": digest}`` of a local file or directory; ``None`` for anything else."""
    path = Path(path).expanduser()
    if path.is_file():
        return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    total = 0
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{file_sha256(file)}\n".encode())
        total += file.stat().st_size
    return {"bytes": total, "sha256": digest.hexdigest()}


def describe_change(path: str, before: dict, now: dict | None) -> str:
    """One line on how a data path differs from its recorded fingerprint."""
    if now is None:
        return f"{path} no longer exists"
    if now["bytes"] != before["bytes"]:
        grew = "grew" if now["bytes"] > before["bytes"] else "shrank"
        return f"{path} {grew} from {before['bytes']} to {now['bytes']} bytes"
    return f"{path} has the same size ({now['bytes']} bytes) but other content"
