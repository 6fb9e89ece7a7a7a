"""Proving a backup restorable: download it, check its sha256, restore it into a scratch copy,
compare what the copy holds with what was recorded at dump time, drop the copy. And, before a
backup counts for anything later (retention, the list offered for restore), checking that what
is stored is still what was taken: its size and the checksum the store itself vouches for."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bq_pipelines.backup.backend import CatalogBackend, Progress, log_progress
from bq_pipelines.backup.manifest import CatalogState, Manifest
from bq_pipelines.lib.errors import BackupError
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines.lib.storage import ObjectStore


@dataclass(frozen=True)
class StoredCheck:
    """Whether the stored object is still the backup its manifest describes."""

    intact: bool | None  # None: the store vouches for no checksum of it (a download would tell)
    detail: str = ""

    @property
    def label(self) -> str:
        return {True: "intact", False: "CORRUPT", None: "unchecked"}[self.intact]


def check_stored(store: ObjectStore, manifest: Manifest) -> StoredCheck:
    """Compare the stored object with its manifest: its size, and the sha256 the store vouches
    for (S3's own checksum, or on the local store a hash of the file if it changed since its
    sidecar), else the store's checksum recorded when it was taken (a multipart dump's
    composite). One HEAD or stat; a dump stored before uploads asked S3 for a checksum has S3
    compute one first (a server-side copy onto itself)."""
    key = manifest.key
    stored = store.stat(key)
    if stored is None:
        return StoredCheck(False, f"{key} is not in the store")
    if stored.size != manifest.size:
        return StoredCheck(
            False, f"{key} is {stored.size} bytes, {manifest.size} when it was taken"
        )
    if not stored.sha256 and not (manifest.store_checksum and stored.checksum):
        stored = store.checksum_in_place(key) or stored
    if stored.sha256:
        if stored.sha256 == manifest.sha256:
            return StoredCheck(True)
        return StoredCheck(
            False, f"{key} has sha256 {stored.sha256}, {manifest.sha256} when it was taken"
        )
    if manifest.store_checksum and stored.checksum:
        if stored.checksum == manifest.store_checksum:
            return StoredCheck(True)
        return StoredCheck(
            False,
            f"{key}: the store's checksum is {stored.checksum}, {manifest.store_checksum} when "
            "it was taken",
        )
    return StoredCheck(None, f"{key}: the store vouches for no checksum of it")


@dataclass(frozen=True)
class Verification:
    expected: CatalogState
    found: CatalogState | None
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def fetch_checked(
    store: ObjectStore,
    key: str,
    sha256: str,
    work_dir: Path,
    *,
    progress: Progress = log_progress,
) -> Path:
    """Download `key` into `work_dir` and check it against the sha256 recorded at dump time;
    a corrupted or truncated object is refused (and its download removed)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"{uuid.uuid4().hex[:8]}-{key.rsplit('/', 1)[-1]}"
    progress(f"downloading {key}")
    store.download(key, path)
    progress(f"checking the sha256 of {key} ({path.stat().st_size} bytes)")
    actual = sha256_file(path)
    if actual != sha256:
        size = path.stat().st_size
        path.unlink()
        raise BackupError(
            f"{key} is corrupted or truncated: its sha256 is {actual} ({size} bytes), the "
            f"backup recorded {sha256}; refused, nothing was restored"
        )
    return path


def verify_backup(
    backend: CatalogBackend,
    store: ObjectStore,
    manifest: Manifest,
    work_dir: Path,
    *,
    progress: Progress = log_progress,
) -> Verification:
    """Restore the stored backup into a scratch copy and compare; the copy is always dropped."""
    started = time.monotonic()
    scratch = f"{backend.default_target}_verify_{uuid.uuid4().hex[:8]}"
    found: CatalogState | None = None
    try:
        path = fetch_checked(store, manifest.key, manifest.sha256, work_dir, progress=progress)
        try:
            found = backend.restore_copy(
                path, scratch, made_by=manifest.versions.get("pg_dump"), progress=progress
            )
            problems = manifest.state.differences(found)
        finally:
            backend.remove_copy(scratch)
            path.unlink(missing_ok=True)
    except BackupError as exc:
        problems = [str(exc)]
    seconds = time.monotonic() - started
    progress(
        f"verified {manifest.key} in {seconds:.1f} s: "
        + ("restorable, counts match" if not problems else "; ".join(problems))
    )
    return Verification(manifest.state, found, round(seconds, 3), problems)
