"""How the request store connects: SQLite (the embedded default) or PostgreSQL.

SQLite runs in WAL mode with synchronous=FULL (a committed request survives a power cut), every
write transaction takes the write lock at BEGIN (no lock upgrade deadlocks), and its files are
private (0600: they hold request bodies).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

POOL_SIZE = 20


def create_engine(database_url: str) -> Engine:
    """An engine for a `postgresql://` or `sqlite:///` database URL."""
    url = engine_url(database_url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    # As many kept connections as requests a worker serves at once (the bench's 20 clients): a
    # smaller pool opened and closed a connection (a PostgreSQL backend) for every overflow.
    return sa.create_engine(
        url, pool_size=POOL_SIZE, max_overflow=POOL_SIZE, pool_pre_ping=True, pool_recycle=1800
    )


def engine_url(database_url: str) -> str:
    """SQLAlchemy's URL for a `postgresql://` (psycopg 3) or `sqlite:///` database URL."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + database_url.split("://", 1)[1]
    return database_url


def _private_files(database: Path) -> None:
    """The database holds request bodies: 0600, created so before SQLite opens it (SQLite
    gives its -wal and -shm files the database's mode); an older, wider one is narrowed."""
    database.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(database, os.O_RDWR | os.O_CREAT, 0o600))
    for path in (database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)


def _sqlite_engine(url: str) -> Engine:
    path = sa.make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:"):
        _private_files(Path(path))
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling is off: BEGIN is emitted below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("bq_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def lock_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_xact_lock."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), signed=True)
