"""What a backup is in the object store: its keys, and the manifest written beside each one.

    backups/<name>/<YYYY-MM-DD>.dump          pg_dump -Fc of the pgstac database <name>
    backups/<name>/<YYYY-MM-DD>.tar.gz        or: the static catalog folder <name>, archived
    backups/<name>/<YYYY-MM-DD>.dump.sha256   its sha256 (`sha256sum` format, the store's own)
    backups/<name>/<YYYY-MM-DD>.json          the manifest: counts, checksums, versions

The manifest lives in the store, not only in Dagster's event log: the log may sit in the very
PostgreSQL that needs restoring. Keys of any other shape are not backups and are never touched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, Literal

from bq_pipelines.lib.errors import BackupError
from bq_pipelines.lib.hashing import sha256_stream
from bq_pipelines.lib.words import plural

BACKUP_PREFIX = "backups"
BackupKind = Literal["pgstac", "static"]
SUFFIXES: dict[BackupKind, str] = {"pgstac": ".dump", "static": ".tar.gz"}
MANIFEST_SUFFIX = ".json"
MANIFEST_VERSION = 1
_KEY_RE = re.compile(
    rf"^{BACKUP_PREFIX}/(?P<name>[^/]+)/(?P<day>\d{{4}}-\d{{2}}-\d{{2}})(?P<suffix>\.dump|\.tar\.gz)$"
)


@dataclass(frozen=True, order=True)
class BackupKey:
    """The key of one day's backup of one catalog."""

    name: str
    day: date
    suffix: str

    @property
    def key(self) -> str:
        return f"{BACKUP_PREFIX}/{self.name}/{self.day.isoformat()}{self.suffix}"

    @property
    def manifest_key(self) -> str:
        return f"{BACKUP_PREFIX}/{self.name}/{self.day.isoformat()}{MANIFEST_SUFFIX}"

    @property
    def kind(self) -> BackupKind:
        return next(kind for kind, suffix in SUFFIXES.items() if suffix == self.suffix)

    @classmethod
    def parse(cls, key: str) -> BackupKey | None:
        """The backup a key names, or None for any other object (even under `backups/`)."""
        match = _KEY_RE.match(key)
        if match is None:
            return None
        try:
            day = date.fromisoformat(match["day"])
        except ValueError:  # 2026-02-30: the shape of a date, not one of ours
            return None
        return cls(match["name"], day, match["suffix"])

    @classmethod
    def of(cls, name: str, day: date, kind: BackupKind) -> BackupKey:
        key = cls(name, day, SUFFIXES[kind])
        if cls.parse(key.key) != key:
            raise BackupError(f"catalog name {name!r} cannot name a backup folder (no '/')")
        return key


def catalog_prefix(name: str) -> str:
    """Where the backups of one catalog live (a string prefix, as object stores list)."""
    return f"{BACKUP_PREFIX}/{name}/"


@dataclass(frozen=True)
class CatalogState:
    """What a catalog held at one moment: enough to tell that a restore brought it all back."""

    collections: int
    items: int
    item_ids_sha256: str  # sha256 of the sorted `collection/item` ids, one per line

    def counts(self) -> str:
        """ "1 collection, 3 items"."""
        return f"{plural(self.collections, 'collection')}, {plural(self.items, 'item')}"

    def differences(self, found: CatalogState) -> list[str]:
        """How `found` differs from this expected state, in words (empty when equal)."""
        problems = []
        for what in ("collections", "items"):
            expected, got = getattr(self, what), getattr(found, what)
            if expected != got:
                problems.append(f"{what}: {expected} at dump time, {got} restored")
        if self.item_ids_sha256 != found.item_ids_sha256:
            problems.append(
                f"item ids checksum: {self.item_ids_sha256} at dump time, "
                f"{found.item_ids_sha256} restored"
            )
        return problems


def catalog_state(collections: int, sorted_item_ids: Iterable[tuple[str, str]]) -> CatalogState:
    """Count and hash `(collection, item id)` pairs given in ascending (code point) order.

    Streams: a database hands its ids over a cursor, never all at once. The order is checked,
    since two sides of a comparison must hash the same sequence.
    """
    digest = sha256_stream()
    count = 0
    previous: tuple[str, str] | None = None
    for pair in sorted_item_ids:
        if previous is not None and pair < previous:
            raise ValueError(f"item ids are not sorted: {previous} before {pair}")
        digest.update(f"{pair[0]}/{pair[1]}\n".encode())
        count += 1
        previous = pair
    return CatalogState(collections, count, digest.hexdigest())


@dataclass(frozen=True)
class Manifest:
    """Written beside a backup once it is dumped and its verification has run."""

    key: str
    kind: BackupKind
    catalog: str  # where it came from, without secrets: host:port/database or a folder
    size: int
    sha256: str
    state: CatalogState
    started_at: str  # ISO 8601, UTC
    duration_seconds: float
    versions: dict[str, str] = field(default_factory=dict)  # pg_dump, server, pgstac
    verified: bool | None = None  # None: not verified (yet)
    verification_seconds: float | None = None
    # The store's own checksum of the dump as it was stored (S3: SHA-256, a composite of the
    # parts for a multipart upload): what the stored object is checked against later. None in
    # manifests written before it was recorded.
    store_checksum: str | None = None

    @property
    def backup_key(self) -> BackupKey:
        parsed = BackupKey.parse(self.key)
        if parsed is None:
            raise BackupError(f"manifest names {self.key!r}, which is not a backup key")
        return parsed

    def to_json(self) -> bytes:
        document = {"manifest_version": MANIFEST_VERSION, **asdict(self)}
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            document: dict[str, Any] = json.loads(raw)
            document.pop("manifest_version", None)
            state = CatalogState(**document.pop("state"))
            return cls(state=state, **document)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupError(f"manifest {where} is not a backup manifest: {exc}") from exc
