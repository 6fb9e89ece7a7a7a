"""The backup layout, the catalog state checksum, manifests, and the PostgreSQL tool checks."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import date
from pathlib import Path

import pytest

from bq_pipelines.backup.manifest import BackupKey, CatalogState, Manifest, catalog_state
from bq_pipelines.backup.postgres import PgTools, Version
from bq_pipelines.lib.errors import BackupError, ConfigError
from bq_pipelines.lib.postgres_dsn import parse_dsn


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("backups/bq_catalog/2026-11-27.dump", ("bq_catalog", date(2026, 11, 27), ".dump")),
        ("backups/catalog/2026-01-31.tar.gz", ("catalog", date(2026, 1, 31), ".tar.gz")),
    ],
)
def test_backup_keys_round_trip(key: str, expected: tuple[str, date, str]) -> None:
    parsed = BackupKey.parse(key)
    assert parsed == BackupKey(*expected)
    assert parsed is not None and parsed.key == key
    assert parsed.manifest_key == key.rsplit(".dump", 1)[0].rsplit(".tar.gz", 1)[0] + ".json"


@pytest.mark.parametrize(
    "key",
    [
        "backups/bq_catalog/2026-11-27.dump.sha256",
        "backups/bq_catalog/2026-11-27.json",
        "backups/bq_catalog/2026-02-30.dump",  # the shape of a date, not a date
        "backups/bq_catalog/notes.txt",
        "backups/bq_catalog/manual-2026-11-27.dump",
        "backups/bq_catalog/2026-11-27.dump.bak",
        "backups/bq_catalog/old/2026-11-27.dump",
        "io/bq_catalog/2026-11-27.dump",
    ],
)
def test_other_keys_are_not_backups(key: str) -> None:
    assert BackupKey.parse(key) is None


def test_a_name_with_a_slash_cannot_name_a_backup() -> None:
    with pytest.raises(BackupError, match="cannot name a backup folder"):
        BackupKey.of("a/b", date(2026, 1, 1), "pgstac")


def test_catalog_state_hashes_sorted_ids_line_by_line() -> None:
    pairs = [("a", "1"), ("a", "2"), ("b", "1")]
    state = catalog_state(2, pairs)
    expected = hashlib.sha256(b"a/1\na/2\nb/1\n").hexdigest()
    assert state == CatalogState(2, 3, expected)
    assert catalog_state(0, []) == CatalogState(0, 0, hashlib.sha256(b"").hexdigest())
    with pytest.raises(ValueError, match="not sorted"):
        catalog_state(2, [("b", "1"), ("a", "1")])


def test_state_differences_name_the_numbers() -> None:
    recorded = catalog_state(2, [("a", "1"), ("a", "2")])
    restored = catalog_state(1, [("a", "1")])
    problems = recorded.differences(restored)
    assert problems[0] == "collections: 2 at dump time, 1 restored"
    assert problems[1] == "items: 2 at dump time, 1 restored"
    assert problems[2].startswith(f"item ids checksum: {recorded.item_ids_sha256} at dump time")
    assert recorded.differences(recorded) == []


def test_manifest_json_round_trip() -> None:
    manifest = Manifest(
        key="backups/db/2026-11-27.dump",
        kind="pgstac",
        catalog="127.0.0.1:5432/db",
        size=123,
        sha256="0" * 64,
        state=catalog_state(1, [("a", "1")]),
        started_at="2026-11-27T04:00:00+00:00",
        duration_seconds=1.5,
        versions={"pg_dump": "15.20", "server": "15.20", "pgstac": "0.10.0"},
        verified=True,
        verification_seconds=2.0,
    )
    assert Manifest.from_json(manifest.to_json(), "m.json") == manifest
    with pytest.raises(BackupError, match=r"m\.json is not a backup manifest"):
        Manifest.from_json(b'{"key": 1}', "m.json")


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n", Version(15, 20)),
        ("pg_restore (PostgreSQL) 17.2\n", Version(17, 2)),
        ("psql (PostgreSQL) 18beta1\n", Version(18, 0)),
        ("15.20", Version(15, 20)),
    ],
)
def test_versions_are_read_from_tool_output(text: str, version: Version) -> None:
    assert Version.parse(text) == version


def test_server_version_number() -> None:
    assert Version.from_server_num(150020) == Version(15, 20)
    assert str(Version.from_server_num(170002)) == "17.2"


def test_the_systems_pg_dump_is_found_and_read() -> None:
    tools = PgTools()
    path, version = tools.require("pg_dump", Version(15, 0), "the server")
    output = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    assert str(version) in output


def test_a_missing_pg_dump_names_the_server_version(tmp_path: Path) -> None:
    with pytest.raises(BackupError) as caught:
        PgTools(tmp_path).require("pg_dump", Version(15, 20), "the server 127.0.0.1:5432/db")
    message = str(caught.value)
    assert f"pg_dump not found in BQ_PG_BIN_DIR={tmp_path}" in message
    assert "the server 127.0.0.1:5432/db is 15.20" in message
    assert "postgresql-client-<major>" in message


def test_a_pg_dump_older_than_the_server_names_both_versions() -> None:
    # The system's client is 15.x; a server one major version ahead must be refused.
    tools = PgTools()
    path, client = tools.require("pg_dump", Version(15, 0), "the server")
    newer = Version(client.major + 1, 1)
    with pytest.raises(BackupError) as caught:
        tools.require("pg_dump", newer, "the server 127.0.0.1:5432/db")
    assert str(caught.value).startswith(
        f"pg_dump {client} ({path}) is older than the server 127.0.0.1:5432/db {newer}"
    )
    assert f"postgresql-client-{newer.major}" in str(caught.value)


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://user:s3cret-pw@host:5432", "BQ_PGSTAC_DSN: names no database"),
        ("host=db password=s3cret-pw extra", "BQ_PGSTAC_DSN: not a PostgreSQL connection string"),
    ],
)
def test_a_bad_dsn_is_named_without_its_password(dsn: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_dsn(dsn)
    assert message in str(caught.value)
    assert "s3cret" not in str(caught.value)
