"""`bq-pipelines restore` and `bq-pipelines backups` on the real services: the catalog the STAC
API serves comes back as it was at the backup, a bad backup never replaces anything, and the
static catalog restores the same way."""

from __future__ import annotations

import io
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pytest

from bq_pipelines.backup.dump import read_manifest, take_backup, write_manifest
from bq_pipelines.backup.manifest import BackupKey, catalog_state
from bq_pipelines.backup.pgstac import PgstacCatalog
from bq_pipelines.cli import main
from bq_pipelines.lib.catalog import StacApiPublisher, StaticCatalogPublisher
from bq_pipelines.lib.storage import LocalObjectStore, ObjectStore, S3ObjectStore
from bq_pipelines.settings import Settings
from bq_pipelines_tests.backup.conftest import PgstacDatabases
from bq_pipelines_tests.backup.helpers import (
    api_catalog,
    collection_document,
    database_of,
    fill_catalog,
    item_document,
    run_backup_job,
    s3_store,
    tree_bytes,
)

TODAY = datetime.now(UTC).date().isoformat()


def set_env(monkeypatch: pytest.MonkeyPatch, settings_env: dict[str, str]) -> None:
    """What a user exports before running the CLI (and what the resources read via EnvVar)."""
    for name, value in settings_env.items():
        monkeypatch.setenv(name, value)


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def services_cli_env(
    services_env: dict[str, str], s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The CLI's environment on the real services, with a bucket of the test's own."""
    env = {
        **services_env,
        "BQ_HOME": str(tmp_path / "bq"),
        "BQ_S3_BUCKET": s3_bucket,
        "BQ_PUBLIC_BASE_URL": f"{services_env['BQ_S3_ENDPOINT_URL']}/{s3_bucket}",
    }
    set_env(monkeypatch, env)
    return env


def store_for(env: dict[str, str]) -> S3ObjectStore:
    return s3_store(env, env["BQ_S3_BUCKET"])


# ---------------------------------------------------------------- the STAC API's catalog


@pytest.mark.serial  # swaps the database every other test's STAC API requests go to
def test_restore_brings_back_what_the_stac_api_served_at_the_backup(
    services_cli_env: dict[str, str],
    pgstac_databases: PgstacDatabases,
    stac_api_url: str,
    unique_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The session's own catalog database, under the running stac-fastapi: backed up by the
    asset, changed through the API, restored by the CLI, read again without a restart."""
    catalog_db = database_of(services_cli_env["BQ_PGSTAC_DSN"])
    kept, added = f"restore-{unique_id}", f"restore-new-{unique_id}"
    with StacApiPublisher(stac_api_url) as api:
        api.upsert_collection(pystac.Collection.from_dict(collection_document(kept)))
        api.upsert_items(
            [pystac.Item.from_dict(item_document(kept, f"{kept}-{i}", n=i)) for i in range(5)]
        )
    at_backup = api_catalog(stac_api_url)
    assert len([k for k in at_backup["items"] if k.startswith(f"{kept}/")]) == 5

    result = run_backup_job(Settings.from_env(services_cli_env), TODAY)
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.passed

    with StacApiPublisher(stac_api_url) as api:
        api.upsert_item(pystac.Item.from_dict(item_document(kept, f"{kept}-new")))
        api.upsert_item(pystac.Item.from_dict(item_document(kept, f"{kept}-1", n=100)))
        api.delete_item(kept, f"{kept}-2")
        api.upsert_collection(pystac.Collection.from_dict(collection_document(added)))
    changed = api_catalog(stac_api_url)
    assert changed != at_backup and added in changed["collections"]

    try:
        code, out, err = cli(["restore", "--date", TODAY, "--yes"], capsys)
        assert code == 0, err
        assert re.search(rf"restored backups/{catalog_db}/{TODAY}\.dump into {catalog_db}", out)
        [before] = re.findall(rf"kept as ({catalog_db}_before_\d{{14}})", out)
        assert "% of the archive read" in err and "swapping" in err  # progress

        # Served at once by the same stac-fastapi process: its pool reconnected by name.
        assert api_catalog(stac_api_url) == at_backup
        # The replaced catalog is kept, changes included.
        old = PgstacCatalog(services_cli_env["BQ_PGSTAC_DSN"])
        assert old.state(before).items == old.state(catalog_db).items  # +1 new, -1 deleted
        assert old.state(before).collections == old.state(catalog_db).collections + 1
    finally:
        for name in pgstac_databases.names(f"{catalog_db}_before_%"):
            pgstac_databases.drop_all(name)
    assert pgstac_databases.names(f"{catalog_db}_restore_%") == []


# ------------------------------------------------------------- refused before replacing


@pytest.fixture
def test_db_env(
    services_cli_env: dict[str, str], pgstac_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The CLI pointed at a test database of its own (not the session's catalog)."""
    monkeypatch.setenv("BQ_PGSTAC_DSN", pgstac_dsn)
    return {**services_cli_env, "BQ_PGSTAC_DSN": pgstac_dsn}


def verified_backup(env: dict[str, str], tmp_path: Path) -> BackupKey:
    """A backup of the test database, as the asset leaves it (dumped, manifest written)."""
    manifest = take_backup(
        PgstacCatalog(env["BQ_PGSTAC_DSN"]), store_for(env), datetime.now(UTC).date()
    )
    write_manifest(store_for(env), replace(manifest, verified=True))
    return manifest.backup_key


@pytest.mark.parametrize("damage", ["truncated", "corrupted-with-its-checksum"])
def test_a_damaged_backup_is_refused_and_the_target_is_intact(
    test_db_env: dict[str, str],
    pgstac_databases: PgstacDatabases,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    dsn = test_db_env["BQ_PGSTAC_DSN"]
    fill_catalog(dsn, {"demo": 3, "chelsa": 7})
    key = verified_backup(test_db_env, tmp_path)
    store = store_for(test_db_env)
    fill_catalog(dsn, {"later": 2})  # the live catalog moved on since the backup
    live = PgstacCatalog(dsn).state(database_of(dsn))
    dump = store.get_bytes(key.key) or b""
    if damage == "truncated":
        store.put_stream(io.BytesIO(dump[: len(dump) // 3]), key.key, content_type="x")
    else:  # flipped bytes, and a manifest that vouches for them: pg_restore must say no
        broken = dump[:100] + bytes(b ^ 0xFF for b in dump[100:2000]) + dump[2000:]
        stored = store.put_stream(io.BytesIO(broken), key.key, content_type="x")
        manifest = read_manifest(store, key)
        assert manifest is not None
        write_manifest(store, replace(manifest, sha256=stored.sha256))

    code, _, err = cli(["restore", "--key", key.key, "--yes"], capsys)

    assert code == 1
    expected = "corrupted or truncated" if damage == "truncated" else "pg_restore exited with 1"
    assert expected in err
    assert PgstacCatalog(dsn).state(database_of(dsn)) == live
    assert pgstac_databases.leftovers(database_of(dsn)) == []  # no copy left behind


def test_a_restore_that_does_not_match_is_not_swapped_and_says_how_to_finish(
    test_db_env: dict[str, str],
    pgstac_databases: PgstacDatabases,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = test_db_env["BQ_PGSTAC_DSN"]
    database = database_of(dsn)
    fill_catalog(dsn, {"demo": 3})
    key = verified_backup(test_db_env, tmp_path)
    store = store_for(test_db_env)
    manifest = read_manifest(store, key)
    assert manifest is not None
    claimed = catalog_state(2, [("demo", f"demo_{i:04d}") for i in range(4)])
    write_manifest(store, replace(manifest, state=claimed))
    fill_catalog(dsn, {"later": 2})
    live = PgstacCatalog(dsn).state(database)

    code, _, err = cli(["restore", "--date", key.day.isoformat(), "--yes"], capsys)

    assert code == 1
    assert "collections: 2 at dump time, 1 restored; items: 4 at dump time, 3 restored" in err
    assert f"{database} was not touched" in err
    [copy] = pgstac_databases.leftovers(database)  # kept for inspection, named in the message
    assert copy.startswith(f"{database}_restore_")
    assert f'DROP DATABASE "{copy}"' in err  # how to discard it
    assert PgstacCatalog(dsn).state(database) == live

    # The steps printed to finish by hand, then to roll back, work as printed.
    swap_by_hand, rest = err.split("To swap by hand", 1)[1].split("To discard", 1)
    roll_back = rest.split("To roll a swap back", 1)[1]
    run_sql(pgstac_databases, swap_by_hand)
    restored = PgstacCatalog(dsn).state(database)  # the restored copy is the target now
    assert (restored.collections, restored.items) == (1, 3)
    assert pgstac_databases.names(f"{database}_before_%") != []
    run_sql(pgstac_databases, roll_back)
    assert PgstacCatalog(dsn).state(database) == live
    assert pgstac_databases.leftovers(database) == [copy]


def run_sql(databases: PgstacDatabases, printed: str) -> None:
    """Run the SQL lines of a message as a user would paste them into psql."""
    statements = "\n".join(line for line in printed.splitlines() if line.startswith("  "))
    assert statements
    with databases.server.admin() as conn:
        for statement in filter(None, (s.strip() for s in statements.split(";"))):
            conn.execute(statement)


def test_a_dry_run_restores_verifies_and_drops_its_copy(
    test_db_env: dict[str, str],
    pgstac_databases: PgstacDatabases,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = test_db_env["BQ_PGSTAC_DSN"]
    fill_catalog(dsn, {"demo": 3})
    key = verified_backup(test_db_env, tmp_path)
    fill_catalog(dsn, {"later": 2})
    live = PgstacCatalog(dsn).state(database_of(dsn))

    code, out, err = cli(["restore", "--date", key.day.isoformat(), "--dry-run"], capsys)

    assert code == 0, err
    assert "restores (1 collection, 3 items, ids match)" in out
    assert PgstacCatalog(dsn).state(database_of(dsn)) == live
    assert pgstac_databases.leftovers(database_of(dsn)) == []


def test_restore_into_another_database_creates_it(
    test_db_env: dict[str, str],
    pgstac_databases: PgstacDatabases,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = test_db_env["BQ_PGSTAC_DSN"]
    database = database_of(dsn)
    fill_catalog(dsn, {"demo": 3})
    key = verified_backup(test_db_env, tmp_path)
    copy = f"{database}_copy"  # beside the test database, dropped with it

    code, out, err = cli(["restore", "--key", key.key, "--target", copy, "--yes"], capsys)

    assert code == 0, err
    assert "kept as" not in out  # nothing was replaced
    assert PgstacCatalog(dsn).state(copy) == PgstacCatalog(dsn).state(database)
    assert pgstac_databases.leftovers(database) == [copy]


def test_restore_refuses_to_replace_a_database_that_is_not_pgstac(
    test_db_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = verified_backup(test_db_env, tmp_path)
    code, _, err = cli(["restore", "--key", key.key, "--target", "postgres", "--yes"], capsys)
    assert code == 1
    assert "127.0.0.1:5432/postgres is not a pgstac database" in err


def test_restore_asks_first_and_refuses_without_a_terminal(
    test_db_env: dict[str, str], pgstac_databases: PgstacDatabases, tmp_path: Path, capsys
) -> None:
    dsn = test_db_env["BQ_PGSTAC_DSN"]
    fill_catalog(dsn, {"demo": 3})
    key = verified_backup(test_db_env, tmp_path)

    code, _, err = cli(["restore", "--date", key.day.isoformat()], capsys)

    assert code == 1
    assert "confirm with --yes" in err
    assert pgstac_databases.leftovers(database_of(dsn)) == []


class Terminal(io.StringIO):
    """Typed answers, as from a terminal."""

    def isatty(self) -> bool:
        return True


def test_restore_asks_before_replacing_and_no_means_no(
    test_db_env: dict[str, str],
    pgstac_databases: PgstacDatabases,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsn = test_db_env["BQ_PGSTAC_DSN"]
    database = database_of(dsn)
    fill_catalog(dsn, {"demo": 3})
    key = verified_backup(test_db_env, tmp_path)
    fill_catalog(dsn, {"later": 2})
    live = PgstacCatalog(dsn).state(database)
    monkeypatch.setattr("sys.stdin", Terminal("no\n"))

    code, out, err = cli(["restore", "--date", key.day.isoformat()], capsys)

    assert code == 1
    assert f"(2 collections, 5 items) with the backup of {key.day} (1 collection, 3 items)" in out
    assert "restore cancelled" in err
    assert PgstacCatalog(dsn).state(database) == live
    assert pgstac_databases.leftovers(database) == []


def test_backups_lists_date_size_and_counts(
    test_db_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_catalog(test_db_env["BQ_PGSTAC_DSN"], {"demo": 3, "chelsa": 4})
    key = verified_backup(test_db_env, tmp_path)
    store_for(test_db_env).put_stream(
        io.BytesIO(b"x"), f"backups/{key.name}/2026-01-01.dump", content_type="x"
    )

    code, out, err = cli(["backups"], capsys)

    assert code == 0, err
    header, incomplete, complete = out.splitlines()
    assert header.split()[:7] == [
        "date",
        "catalog",
        "kind",
        "size",
        "collections",
        "items",
        "verified",
    ]
    assert incomplete.split()[:2] == ["2026-01-01", key.name]
    assert "incomplete" in incomplete
    fields = complete.split()
    assert fields[:3] == [key.day.isoformat(), key.name, "pgstac"]
    assert fields[4:] == ["KiB", "2", "7", "yes", key.key]


def test_restore_names_a_bad_choice_of_backup(
    test_db_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(["restore", "--key", "backups/x/notes.txt", "--yes"], capsys)
    assert code == 1 and "is not a backup" in err
    code, _, err = cli(["restore", "--key", "backups/catalog/2026-01-01.tar.gz", "--yes"], capsys)
    assert code == 1 and "is a static backup and the configured catalog is pgstac" in err
    code, _, err = cli(["restore", "--date", "2026-01-01", "--yes"], capsys)
    assert code == 1 and "no backup (no manifest" in err
    with pytest.raises(SystemExit):
        main(["restore", "--date", "27/11/2026"])
    assert "'27/11/2026' is not a date (YYYY-MM-DD)" in capsys.readouterr().err


# ------------------------------------------------------------------------ static catalog


def test_the_static_catalog_restores_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded defaults (`make demo`): local object store, static catalog folder."""
    env = {"BQ_HOME": str(tmp_path / "bq")}
    set_env(monkeypatch, env)
    for name in ("BQ_OBJECT_STORE", "BQ_CATALOG", "BQ_PGSTAC_DSN"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env(env)
    publisher = StaticCatalogPublisher(settings.catalog_dir)
    publisher.upsert_collection(pystac.Collection.from_dict(collection_document("demo")))
    for i in range(4):
        publisher.upsert_item(pystac.Item.from_dict(item_document("demo", f"demo-{i}")))
    at_backup = tree_bytes(settings.catalog_dir)

    result = run_backup_job(settings, TODAY)
    assert result.success
    store: ObjectStore = LocalObjectStore(settings.objects_dir)
    key = f"backups/catalog/{TODAY}.tar.gz"
    assert store.stat(key) is not None

    publisher.upsert_item(pystac.Item.from_dict(item_document("demo", "demo-new")))
    publisher.upsert_item(pystac.Item.from_dict(item_document("demo", "demo-1", n=1)))
    publisher.delete_item("demo", "demo-2")
    changed = tree_bytes(settings.catalog_dir)
    assert changed != at_backup

    code, out, err = cli(["restore", "--date", TODAY, "--yes"], capsys)

    assert code == 0, err
    assert tree_bytes(settings.catalog_dir) == at_backup
    [before] = re.findall(r"kept as (\S+_before_\d{14})", out)
    assert tree_bytes(Path(before)) == changed
    assert sorted(p.name for p in settings.catalog_dir.parent.iterdir()) == sorted(
        ["catalog", Path(before).name, "objects", "work"]
    )
