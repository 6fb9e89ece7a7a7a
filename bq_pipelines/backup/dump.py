"""Taking a backup: the catalog's dump streamed into the object store, then its manifest."""

from __future__ import annotations

import io
import time
from datetime import UTC, date, datetime

from bq_pipelines.backup.backend import CatalogBackend, Progress, log_progress
from bq_pipelines.backup.manifest import BackupKey, Manifest
from bq_pipelines.lib.storage import ObjectStore

MANIFEST_CONTENT_TYPE = "application/json"


def take_backup(
    backend: CatalogBackend, store: ObjectStore, day: date, *, progress: Progress = log_progress
) -> Manifest:
    """Dump the catalog to `backups/<name>/<day><suffix>` (replacing that day's backup) and
    return its manifest, not yet verified nor written (see `write_manifest`)."""
    key = BackupKey.of(backend.name, day, backend.kind)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    progress(f"dumping {backend.describe()} to {key.key}")
    with backend.open_dump() as dump:
        # Private whatever BQ_S3_PUBLIC_READ says: a backup is not a published dataset.
        stored = store.put_stream(
            dump.stream, key.key, content_type=backend.content_type, private=True
        )
    duration = time.monotonic() - started
    progress(f"stored {key.key}: {stored.size} bytes in {duration:.1f} s")
    return Manifest(
        key=key.key,
        kind=backend.kind,
        catalog=backend.describe(),
        size=stored.size,
        sha256=stored.sha256,
        state=dump.state,
        started_at=started_at.isoformat(timespec="seconds"),
        duration_seconds=round(duration, 3),
        versions=dump.versions,
        store_checksum=stored.checksum or None,
    )


def write_manifest(store: ObjectStore, manifest: Manifest) -> None:
    store.put_stream(
        io.BytesIO(manifest.to_json()),
        manifest.backup_key.manifest_key,
        content_type=MANIFEST_CONTENT_TYPE,
        private=True,
    )


def read_manifest(store: ObjectStore, key: BackupKey) -> Manifest | None:
    raw = store.get_bytes(key.manifest_key)
    return None if raw is None else Manifest.from_json(raw, key.manifest_key)
