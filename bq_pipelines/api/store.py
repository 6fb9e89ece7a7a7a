"""Ingestion requests and their statuses, stored before the API answers: SQLite by default,
PostgreSQL when BQ_API_DATABASE_URL names one (SQLAlchemy Core, one table).

The API inserts a request (`accepted`), the Dagster sensor reads the accepted ones, the run that
processes a request moves it to `running`, then `finished` or `failed`, recording the legacy step
name as it goes. A run updates a request only while it is the request's current run, so a late
or re-executed run never overwrites a newer one's status.

SQLite runs in WAL mode with synchronous=FULL (a committed request survives a power cut) and
every write transaction takes the write lock at BEGIN (no lock upgrade deadlocks).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from bq_pipelines.api.models import (
    GETCOLLECTION,
    PROCESS_FINISHED,
    RECEIVED,
    State,
    echo_param,
)

metadata = sa.MetaData()
# SQLite aliases the rowid only for a column typed exactly INTEGER.
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
requests_table = sa.Table(
    "ingestion_requests",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),
    sa.Column("idempotency_key", sa.String(200), unique=True),
    sa.Column("collection_id", sa.String(200), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("operation", sa.String(40), nullable=False),
    sa.Column("step", sa.String(40)),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("item_url", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_ingestion_requests_state_seq", "state", "seq"),
)
WAITING_DESCRIPTION = "received: waiting for a Dagster run"
UNFINISHED: tuple[State, ...] = ("accepted", "running")


@dataclass(frozen=True)
class StoredRequest:
    id: str
    collection_id: str
    item_id: str
    request: dict[str, Any]
    state: State
    operation: str
    step: str | None
    status: str
    description: str
    run_id: str | None
    item_url: str | None
    created_at: datetime
    updated_at: datetime

    def legacy_status(self, dagster_ui_url: str | None = None) -> dict[str, Any]:
        """The `/status` answer: legacy fields first, then additions."""
        run_url = (
            f"{dagster_ui_url.rstrip('/')}/runs/{self.run_id}"
            if dagster_ui_url and self.run_id
            else None
        )
        return {
            "_id": self.id,
            "_operation": self.operation,
            "_status": self.status,
            "_description": self.description,
            "_param": echo_param(self.request),
            "_state": self.state,
            "_step": self.step,
            "_run_id": self.run_id,
            "_run_url": run_url,
            "_item_url": self.item_url,
            "_created": _iso(self.created_at),
            "_updated": _iso(self.updated_at),
        }


class IdempotencyKeyReused(Exception):
    """An Idempotency-Key already names another request body."""

    def __init__(self, key: str, first_id: str) -> None:
        self.key = key
        self.first_id = first_id
        super().__init__(
            f"already used for request {first_id} with another body; repeat that body exactly "
            "to get its id, or send a new key"
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive date-times: every stored one is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _row(row: Mapping[str, Any]) -> StoredRequest:
    return StoredRequest(
        id=row["id"],
        collection_id=row["collection_id"],
        item_id=row["item_id"],
        request=dict(row["request"]),
        state=row["state"],
        operation=row["operation"],
        step=row["step"],
        status=row["status"],
        description=row["description"],
        run_id=row["run_id"],
        item_url=row["item_url"],
        created_at=_aware(row["created_at"]),
        updated_at=_aware(row["updated_at"]),
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


def _lock_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_xact_lock."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), signed=True)


class RequestStore:
    """The requests table over one engine; `close()` (or `with`) releases its connections."""

    def __init__(self, database_url: str) -> None:
        url = engine_url(database_url)
        if url.startswith("sqlite"):
            self.engine = _sqlite_engine(url)
        else:
            self.engine = sa.create_engine(
                url, pool_size=10, max_overflow=10, pool_pre_ping=True, pool_recycle=1800
            )
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        # SQLite has one writer at a time and makes the others sleep and poll (up to 100 ms a
        # try): the threads of one process queue on a lock instead (the p99 of 20 concurrent
        # POSTs went from 882 ms to ~205 ms here, bench/RESULTS.md).
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        )
        self._create_table()

    def _create_table(self) -> None:
        # Checked first with a read: creating takes the write lock, which another process may
        # hold for a while (see `exclusive`).
        if sa.inspect(self.engine).has_table(requests_table.name):
            return
        try:
            with self._write() as connection:
                metadata.create_all(connection)
        except (OperationalError, ProgrammingError, IntegrityError):
            # Another process created it at the same moment; anything else fails below.
            if not sa.inspect(self.engine).has_table(requests_table.name):
                raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> RequestStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        with (
            self._write_lock,
            self.engine.connect().execution_options(bq_write=True) as connection,
            connection.begin(),
        ):
            yield connection

    def _read(self, query: sa.Select[Any]) -> list[StoredRequest]:
        with self.engine.connect() as connection:
            return [_row(dict(row)) for row in connection.execute(query).mappings()]

    # ------------------------------------------------------------------ the API's side

    def add(
        self,
        request: Mapping[str, Any],
        *,
        collection_id: str,
        item_id: str,
        idempotency_key: str | None = None,
    ) -> tuple[str, bool]:
        """Store an accepted request (committed on return); returns its id and whether it is
        new. A known `idempotency_key` returns the first request's id instead, if the first
        request's body was the same (IdempotencyKeyReused otherwise)."""
        now = datetime.now(UTC)
        request_id = str(uuid.uuid4())
        values = {
            "id": request_id,
            "idempotency_key": idempotency_key,
            "collection_id": collection_id,
            "item_id": item_id,
            "request": dict(request),
            "state": "accepted",
            "operation": RECEIVED,
            "status": "ok",
            "description": WAITING_DESCRIPTION,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._write() as connection:
                connection.execute(requests_table.insert().values(**values))
        except IntegrityError:
            first = self.repeated(idempotency_key, request) if idempotency_key else None
            if first is None:
                raise
            return first, False
        return request_id, True

    def repeated(self, key: str, request: Mapping[str, Any]) -> str | None:
        """The id of the request stored under `key`, None if there is none; raises
        IdempotencyKeyReused when that request's body differs from `request`."""
        found = self._read(sa.select(requests_table).where(requests_table.c.idempotency_key == key))
        if not found:
            return None
        if found[0].request != dict(request):
            raise IdempotencyKeyReused(key, found[0].id)
        return found[0].id

    def get(self, request_id: str) -> StoredRequest | None:
        found = self._read(sa.select(requests_table).where(requests_table.c.id == request_id))
        return found[0] if found else None

    def page(self, limit: int, offset: int = 0) -> list[StoredRequest]:
        """Newest first."""
        return self._read(
            sa.select(requests_table)
            .order_by(requests_table.c.seq.desc())
            .limit(limit)
            .offset(offset)
        )

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(requests_table)).scalar()
                or 0
            )

    def counts_by_state(self) -> dict[str, int]:
        column = requests_table.c.state
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(column, sa.func.count()).group_by(column))
            return {state: int(n) for state, n in rows}

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(sa.select(1))

    # ------------------------------------------------------------------ Dagster's side

    def pending(self, limit: int) -> list[StoredRequest]:
        """Accepted requests no run has started yet, oldest first."""
        return self._read(
            sa.select(requests_table)
            .where(requests_table.c.state == "accepted")
            .order_by(requests_table.c.seq)
            .limit(limit)
        )

    def _update(self, request_id: str, condition: Any, **values: Any) -> bool:
        values["updated_at"] = datetime.now(UTC)
        with self._write() as connection:
            result = connection.execute(
                requests_table.update()
                .where(requests_table.c.id == request_id, condition)
                .values(**values)
            )
        return result.rowcount > 0

    def start(self, request_id: str, run_id: str) -> StoredRequest | None:
        """Make `run_id` the request's current run (a re-execution takes over); None if the
        request is unknown."""
        self._update(
            request_id,
            sa.true(),
            state="running",
            operation=GETCOLLECTION,
            step=None,
            status="ok",
            description=f"run {run_id} started",
            run_id=run_id,
            item_url=None,
        )
        return self.get(request_id)

    def progress(
        self, request_id: str, run_id: str, operation: str, step: str, description: str
    ) -> bool:
        return self._update(
            request_id,
            requests_table.c.run_id == run_id,
            operation=operation,
            step=step,
            description=description,
        )

    def finish(self, request_id: str, run_id: str, item_url: str, description: str) -> bool:
        return self._update(
            request_id,
            requests_table.c.run_id == run_id,
            state="finished",
            operation=PROCESS_FINISHED,
            step=None,
            status="ok",
            description=description,
            item_url=item_url,
        )

    def fail(self, request_id: str, run_id: str, reason: str) -> bool:
        """Record the run's failure; `_operation` stays the step that failed."""
        return self._update(
            request_id,
            requests_table.c.run_id == run_id,
            state="failed",
            status="error",
            description=reason,
        )

    def fail_unfinished(self, request_id: str, run_id: str, reason: str) -> bool:
        """A run that ended without recording its outcome (killed, or failed before its
        step started): fail the request if that run is, or would have been, its current one."""
        run = requests_table.c.run_id
        return self._update(
            request_id,
            sa.and_(
                requests_table.c.state.in_(UNFINISHED),
                sa.or_(run == run_id, run.is_(None)),
            ),
            state="failed",
            status="error",
            description=reason,
            run_id=run_id,
        )

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold a lock named `name` across every process sharing this database: a PostgreSQL
        advisory lock, or SQLite's write lock (which also pauses other writers meanwhile, so
        the holder must not write to this store until it releases it)."""
        with self._write() as connection:
            if not self.is_sqlite:
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(name))))
            yield
