"""PostgreSQL for backups: the client tools (found, versions checked), a server reached through a
connection string whose password never reaches a command line or a message, and databases
created, dropped and swapped by name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bq_pipelines.lib.errors import BackupError
from bq_pipelines.lib.postgres_dsn import parse_dsn

MAINTENANCE_DATABASE = "postgres"
MAX_NAME_BYTES = 63  # NAMEDATALEN - 1: longer names are silently truncated by PostgreSQL
CONNECT_TIMEOUT_SECONDS = 10
TERMINATE_WAIT_SECONDS = 30.0
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


# ---------------------------------------------------------------------------------- versions


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """`15.20`, or a tool's `--version` line: `pg_dump (PostgreSQL) 15.20 (Debian ...)`."""
        match = _VERSION_RE.search(text) or re.match(r"(\d+)(?:\.(\d+))?", text.strip())
        if match is None:
            raise BackupError(f"cannot read a PostgreSQL version in {text.strip()!r}")
        return cls(int(match[1]), int(match[2] or 0))

    @classmethod
    def from_server_num(cls, number: int) -> Version:
        """`server_version_num` (150020 -> 15.20; PostgreSQL 10 and later)."""
        return cls(number // 10000, number % 10000)


@dataclass(frozen=True)
class PgTools:
    """pg_dump, pg_restore and psql from `bin_dir` (BQ_PG_BIN_DIR), else from PATH."""

    bin_dir: Path | None = None

    def path(self, tool: str, server: str) -> str:
        found = shutil.which(tool, path=str(self.bin_dir) if self.bin_dir else None)
        if found is None:
            where = f"in BQ_PG_BIN_DIR={self.bin_dir}" if self.bin_dir else "on PATH"
            raise BackupError(
                f"{tool} not found {where}; {server}: install the PostgreSQL client tools of "
                "that major version or newer (Debian: apt-get install postgresql-client-<major>) "
                "or point BQ_PG_BIN_DIR at them"
            )
        return found

    def version(self, tool: str, path: str) -> Version:
        try:
            result = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackupError(f"{tool} ({path}) does not run: {exc}") from exc
        return Version.parse(result.stdout)

    def require(self, tool: str, at_least: Version, why: str) -> tuple[str, Version]:
        """The tool's path and version; BackupError naming both versions when it is missing
        or older than `at_least` (`why` says whose version that is)."""
        path = self.path(tool, f"{why} is {at_least}")
        version = self.version(tool, path)
        if version.major < at_least.major:
            raise BackupError(
                f"{tool} {version} ({path}) is older than {why} {at_least}: install the "
                f"PostgreSQL {at_least.major} client tools (Debian: apt-get install "
                f"postgresql-client-{at_least.major}) and point BQ_PG_BIN_DIR at them"
            )
        return path, version


# ------------------------------------------------------------------------------------ server


@dataclass(frozen=True)
class Server:
    """The PostgreSQL server of a connection string, and its databases by name."""

    dsn: str

    @property
    def params(self) -> dict[str, Any]:
        return parse_dsn(self.dsn)

    @property
    def database(self) -> str:
        return str(self.params["dbname"])

    def describe(self, database: str | None = None) -> str:
        params = self.params
        host = params.get("host") or "local socket"
        return f"{host}:{params.get('port') or 5432}/{database or self.database}"

    def conninfo(self, database: str | None = None) -> str:
        """For client tools: every parameter but the password (that goes in `tool_env`)."""
        params = {k: v for k, v in self.params.items() if k != "password"}
        if database is not None:
            params["dbname"] = database
        return make_conninfo("", **params)

    def tool_env(self) -> dict[str, str]:
        env = dict(os.environ)
        password = self.params.get("password")
        if password:
            env["PGPASSWORD"] = str(password)
        return env

    def connect(self, database: str | None = None, **options: Any) -> psycopg.Connection:
        try:
            return psycopg.connect(
                make_conninfo(self.dsn, dbname=database or self.database),
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                **options,
            )
        except psycopg.Error as exc:
            raise BackupError(f"cannot connect to {self.describe(database)}: {exc}") from exc

    @contextmanager
    def admin(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection to the maintenance database (CREATE/DROP DATABASE)."""
        with self.connect(MAINTENANCE_DATABASE, autocommit=True) as conn:
            yield conn

    def version(self) -> Version:
        with self.connect() as conn:
            return server_version(conn)


def server_version(conn: psycopg.Connection) -> Version:
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return Version.from_server_num(int(row[0]))


# --------------------------------------------------------------------------------- databases


def check_name(name: str) -> str:
    if len(name.encode()) > MAX_NAME_BYTES:
        raise BackupError(
            f"database name {name!r} is longer than PostgreSQL's {MAX_NAME_BYTES} bytes: "
            "choose a shorter target"
        )
    return name


def database_exists(server: Server, name: str) -> bool:
    with server.admin() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def create_database(server: Server, name: str, *, owner_like: str | None = None) -> None:
    """An empty database (from template0: nothing a restore would collide with), owned like
    `owner_like` when that database exists."""
    check_name(name)
    with server.admin() as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (owner_like,)
        ).fetchone()
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
        if row is not None:
            statement += sql.SQL(" OWNER {}").format(sql.Identifier(row[0]))
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            raise BackupError(f"cannot create database {server.describe(name)}: {exc}") from exc


def drop_database(server: Server, name: str) -> None:
    with server.admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def swap_databases(server: Server, target: str, new: str, before: str) -> None:
    """Rename `target` to `before` and `new` to `target` in one transaction.

    Connection pools (stac-fastapi's) reconnect the moment their connections are terminated,
    and a database with connections cannot be renamed: new connections to `target` are refused
    first, then the existing ones terminated. If anything fails, `target` accepts connections
    again, unchanged.
    """
    check_name(before)
    with server.admin() as conn:
        if not _exists(conn, target):
            conn.execute(_rename(new, target))
            return
        conn.execute(_allow_connections(target, False))
        try:
            _terminate_connections(conn, target)
            with conn.transaction():
                conn.execute(_rename(target, before))
                conn.execute(_rename(new, target))
                # The old copy stays reachable for inspection or a roll back; nothing connects
                # to it by name any more.
                conn.execute(_allow_connections(before, True))
        except BaseException:
            if _exists(conn, target):
                conn.execute(_allow_connections(target, True))
            raise


def _exists(conn: psycopg.Connection, name: str) -> bool:
    return bool(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone())


def _rename(old: str, new: str) -> sql.Composed:
    return sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(old), sql.Identifier(new)
    )


def _allow_connections(name: str, allow: bool) -> sql.Composed:
    return sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
        sql.Identifier(name), sql.Literal(allow)
    )


def _terminate_connections(conn: psycopg.Connection, name: str) -> None:
    deadline = time.monotonic() + TERMINATE_WAIT_SECONDS
    while True:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
        if not rows:
            return
        if time.monotonic() > deadline:
            raise BackupError(
                f"{len(rows)} connections to {name} survive pg_terminate_backend after "
                f"{TERMINATE_WAIT_SECONDS:.0f} s"
            )
        time.sleep(0.1)


def manual_swap_steps(server: Server, target: str, new: str, before: str) -> str:
    """SQL to swap by hand (psql on the maintenance database), and to roll a swap back."""
    return (
        f"To swap by hand (psql on {server.describe(MAINTENANCE_DATABASE)}):\n"
        f"{_swap_sql(target, new, before)}\n"
        f"To discard the restored copy instead: DROP DATABASE {_identifier(new)};\n"
        f"To roll a swap back (the old catalog returns, the restored one is kept as {new}):\n"
        f"{_swap_sql(target, before, new)}"
    )


def _swap_sql(target: str, incoming: str, outgoing: str) -> str:
    t, i, o = (_identifier(name) for name in (target, incoming, outgoing))
    literal = "'" + target.replace("'", "''") + "'"
    return (
        f"  ALTER DATABASE {t} WITH ALLOW_CONNECTIONS false;\n"
        f"  SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {literal};\n"
        f"  BEGIN; ALTER DATABASE {t} RENAME TO {o}; ALTER DATABASE {i} RENAME TO {t};\n"
        f"  ALTER DATABASE {o} WITH ALLOW_CONNECTIONS true; COMMIT;"
    )


def _identifier(name: str) -> str:
    """`name` quoted for SQL typed by hand."""
    return '"' + name.replace('"', '""') + '"'
