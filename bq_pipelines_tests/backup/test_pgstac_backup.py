"""Backups of a real pgstac database: what is recorded, what is refused, what verification
catches, and a backup taken while items are being written."""

from __future__ import annotations

import io
import threading
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from psycopg import sql

from bq_pipelines.backup.dump import take_backup
from bq_pipelines.backup.manifest import catalog_state
from bq_pipelines.backup.pgstac import PgstacCatalog
from bq_pipelines.backup.postgres import PgTools
from bq_pipelines.backup.verify import verify_backup
from bq_pipelines.lib.errors import BackupError
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines.lib.storage import ObjectStore
from bq_pipelines_testkit.values import stored_object
from bq_pipelines_tests.backup.conftest import PgstacDatabases
from bq_pipelines_tests.backup.helpers import (
    connect_pgstac,
    database_of,
    fill_catalog,
    item_document,
    upsert_items,
)

DAY = date(2026, 11, 27)


def expected_ids(collections: dict[str, int]) -> list[tuple[str, str]]:
    return sorted((c, f"{c}_{i:04d}") for c, n in collections.items() for i in range(n))


def test_a_backup_records_what_the_database_holds_and_restores(
    pgstac_dsn: str, pgstac_databases: PgstacDatabases, backup_store: ObjectStore, tmp_path: Path
) -> None:
    content = {"chelsa-clim": 30, "demo": 3, "empty": 0}
    fill_catalog(pgstac_dsn, content)
    backend = PgstacCatalog(pgstac_dsn)
    database = database_of(pgstac_dsn)

    manifest = take_backup(backend, backup_store, DAY)

    assert manifest.key == f"backups/{database}/2026-11-27.dump"
    assert manifest.state == catalog_state(3, expected_ids(content))
    assert set(manifest.versions) == {"pg_dump", "server", "pgstac"}
    assert manifest.versions["pgstac"] == "0.10.0"
    copy = backup_store.download(manifest.key, tmp_path / "copy.dump")
    assert (sha256_file(copy), copy.stat().st_size) == (manifest.sha256, manifest.size)
    assert stored_object(backup_store, manifest.key).sha256 == manifest.sha256
    assert copy.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format

    verification = verify_backup(backend, backup_store, manifest, tmp_path / "work")

    assert verification.passed, verification.problems
    assert verification.found == manifest.state
    assert pgstac_databases.leftovers(database) == []  # the scratch copy is gone
    assert list((tmp_path / "work").iterdir()) == []  # and so is the download


def test_a_database_that_is_not_pgstac_is_refused(
    pgstac_databases: PgstacDatabases, backup_store: ObjectStore
) -> None:
    name = f"{pgstac_databases.prefix}plain"
    with pgstac_databases.server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with pytest.raises(BackupError, match=f"/{name} is not a pgstac database"):
            take_backup(PgstacCatalog(pgstac_databases.dsn(name)), backup_store, DAY)
    finally:
        pgstac_databases.drop_all(name)
    assert backup_store.list_keys("backups/") == []


def test_a_missing_pg_dump_fails_before_anything_is_stored(
    pgstac_dsn: str, backup_store: ObjectStore, tmp_path: Path
) -> None:
    backend = PgstacCatalog(pgstac_dsn, PgTools(tmp_path))  # a folder without the tools
    with pytest.raises(BackupError, match=r"pg_dump not found in BQ_PG_BIN_DIR=.*is 15\.\d+"):
        take_backup(backend, backup_store, DAY)
    assert backup_store.list_keys("backups/") == []


def test_verification_names_the_numbers_and_always_drops_its_copy(
    pgstac_dsn: str, pgstac_databases: PgstacDatabases, backup_store: ObjectStore, tmp_path: Path
) -> None:
    fill_catalog(pgstac_dsn, {"demo": 3})
    backend = PgstacCatalog(pgstac_dsn)
    manifest = take_backup(backend, backup_store, DAY)
    # As if the dump had lost an item: the recorded state says one more than it holds.
    claimed = catalog_state(1, [*expected_ids({"demo": 3}), ("demo", "demo_9999")])

    verification = verify_backup(
        backend, backup_store, replace(manifest, state=claimed), tmp_path / "work"
    )

    assert not verification.passed
    assert verification.problems[0] == "items: 4 at dump time, 3 restored"
    assert verification.problems[1].startswith("item ids checksum:")
    assert pgstac_databases.leftovers(database_of(pgstac_dsn)) == []


@pytest.mark.parametrize("recorded", ["original", "corrupted"])
def test_a_corrupted_dump_fails_verification(
    pgstac_dsn: str,
    pgstac_databases: PgstacDatabases,
    backup_store: ObjectStore,
    tmp_path: Path,
    recorded: str,
) -> None:
    fill_catalog(pgstac_dsn, {"demo": 3})
    backend = PgstacCatalog(pgstac_dsn)
    manifest = take_backup(backend, backup_store, DAY)
    good = backup_store.get_bytes(manifest.key) or b""
    broken = backup_store.put_stream(
        io.BytesIO(good[: len(good) // 2]), manifest.key, content_type="x"
    )
    if recorded == "corrupted":  # a checksum that vouches for the broken dump: pg_restore says
        manifest = replace(manifest, sha256=broken.sha256)

    verification = verify_backup(backend, backup_store, manifest, tmp_path / "work")

    assert not verification.passed
    expected = "corrupted or truncated" if recorded == "original" else "pg_restore exited with 1"
    assert expected in verification.problems[0]
    assert pgstac_databases.leftovers(database_of(pgstac_dsn)) == []


def test_a_backup_taken_while_items_are_written_is_consistent(
    pgstac_dsn: str, backup_store: ObjectStore, tmp_path: Path
) -> None:
    """A backfill writes batches of items (one transaction each) throughout the backup: the
    backup holds whole batches only, exactly the ones its manifest counts."""
    batch = 25
    fill_catalog(pgstac_dsn, {"static": 10, "live": 0})
    committed: list[int] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def backfill() -> None:
        try:
            with connect_pgstac(pgstac_dsn) as conn:
                while not stop.is_set():
                    n = len(committed)
                    items = [item_document("live", f"live_{n:05d}_{i:02d}") for i in range(batch)]
                    upsert_items(conn, items)
                    committed.append(n)
        except BaseException as exc:  # reported by the test below, not lost in the thread
            failures.append(exc)

    writer = threading.Thread(target=backfill)
    writer.start()
    try:
        while len(committed) < 3 and not failures:
            stop.wait(0.01)
        backend = PgstacCatalog(pgstac_dsn)
        manifest = take_backup(backend, backup_store, DAY)
        after_dump = len(committed)
        while len(committed) < after_dump + 2 and not failures:
            stop.wait(0.01)
    finally:
        stop.set()
        writer.join()
    assert failures == []

    live_items = manifest.state.items - 10
    assert live_items % batch == 0  # no half-written batch
    assert 3 * batch <= live_items < len(committed) * batch  # writes before and after it
    verification = verify_backup(backend, backup_store, manifest, tmp_path / "work")
    assert verification.passed, verification.problems
    assert backend.state(database_of(pgstac_dsn)).items == 10 + len(committed) * batch
