"""Fixtures for backups: fresh pgstac databases of our own on the real PostgreSQL.

Every database is named `<test stack's database>_t_<hex>` (the checkout's test catalog as a
prefix, so checkouts sharing the server never touch each other's, and the stack's `down` drops
any left), cloned from one template migrated once per session (`pypgstac migrate` takes ~2 s, a
clone a fraction of it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pypgstac.db import PgstacDB
from pypgstac.migrate import Migrate

from bq_pipelines.backup.postgres import Server
from bq_pipelines.lib.storage import LocalObjectStore, ObjectStore
from bq_pipelines_tests.backup.helpers import s3_store

PG_EXTENSIONS = ("postgis", "btree_gist", "unaccent")


class PgstacDatabases:
    """Creates pgstac databases named with the checkout's prefix and drops them (and every
    copy a backup or restore made beside them) afterwards."""

    def __init__(self, catalog_dsn: str) -> None:
        self.server = Server(catalog_dsn)
        self.prefix = f"{self.server.database}_t_"
        # One template per pytest-xdist worker: each worker's session makes and drops its own.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.template = f"{self.server.database}_tpl_{worker}"

    def dsn(self, database: str) -> str:
        return psycopg.conninfo.make_conninfo(self.server.dsn, dbname=database)

    def prepare_template(self) -> None:
        with self.server.admin() as conn:
            conn.execute(_drop(self.template))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        with psycopg.connect(self.dsn(self.template), autocommit=True) as conn:
            for extension in PG_EXTENSIONS:
                conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(extension)))
        with PgstacDB(dsn=self.dsn(self.template)) as db:
            Migrate(db).run_migration()

    def create(self) -> str:
        name = f"{self.prefix}{uuid.uuid4().hex[:8]}"
        with self.server.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(self.template)
                )
            )
        return name

    def leftovers(self, name: str) -> list[str]:
        """Databases whose name starts with `name`, other than `name` itself."""
        return [d for d in self.names(f"{name}_%") if d != name]

    def names(self, like: str) -> list[str]:
        with self.server.admin() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (like,)
            ).fetchall()
        return [row[0] for row in rows]

    def drop_all(self, name: str) -> None:
        with self.server.admin() as conn:
            for database in [name, *self.leftovers(name)]:
                conn.execute(_drop(database))

    def drop_template(self) -> None:
        with self.server.admin() as conn:
            conn.execute(_drop(self.template))


def _drop(name: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


@pytest.fixture(scope="session")
def pgstac_databases(services_env: dict[str, str]) -> Iterator[PgstacDatabases]:
    databases = PgstacDatabases(services_env["BQ_PGSTAC_DSN"])
    databases.prepare_template()
    yield databases
    databases.drop_template()


@pytest.fixture
def pgstac_dsn(pgstac_databases: PgstacDatabases) -> Iterator[str]:
    """A fresh, empty pgstac database of this test's own; dropped with its copies afterwards."""
    name = pgstac_databases.create()
    yield pgstac_databases.dsn(name)
    pgstac_databases.drop_all(name)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.services)])
def backup_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The project's object store, as a local folder and as a bucket of the moto server."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return s3_store(request.getfixturevalue("services_env"), request.getfixturevalue("s3_bucket"))
