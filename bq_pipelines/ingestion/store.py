"""Ingestion requests and their statuses, stored before the API answers: SQLite by default,
PostgreSQL when BQ_API_DATABASE_URL names one (SQLAlchemy Core, one table).

The API inserts a request (`accepted`), the Dagster sensor reads the accepted ones, the run that
processes a request moves it to `running`, then `finished` or `failed`, recording the legacy step
name as it goes. A run updates a request only while it is the request's current run, so a late
or re-executed run never overwrites a newer one's status.

Attempts: a request's run that ended without recording an outcome (it never started, or its
worker died) is retried under a new attempt number, at most MAX_ATTEMPTS times, each attempt
and its reason recorded (`_attempt`, `_retries`). A run processes a request only while holding
the request's lock (`processing`), and an attempt is given up only by whoever holds it
(`try_processing`): a run still alive is never retried beside itself.

The connection (SQLite's settings, PostgreSQL's pool) is `database.py`'s.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from bq_pipelines.ingestion.database import create_engine, lock_key
from bq_pipelines.ingestion.models import (
    GETCOLLECTION,
    PROCESS_FINISHED,
    RECEIVED,
    State,
    echo_param,
)
from bq_pipelines.lib.locks import (
    DEFAULT_WAIT_SECONDS,
    FileLocks,
    LockError,
    Locks,
    PostgresLocks,
    WaitCallback,
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
    # Columns added after the first release: nullable or with a server default, so that
    # `_add_missing_columns` can add them to an existing table.
    sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
    sa.Column("retries", sa.JSON),
    sa.Column("item_url", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_ingestion_requests_state_seq", "state", "seq"),
)
WAITING_DESCRIPTION = "received: waiting for a Dagster run"
UNFINISHED: tuple[State, ...] = ("accepted", "running")
# A request whose runs keep ending without an outcome (never started, worker killed) is given
# up after this many; a failure its run records (a missing source...) is never retried.
MAX_ATTEMPTS = 3


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
    attempt: int = 1
    retries: tuple[dict[str, Any], ...] = ()

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
            "_attempt": self.attempt,
            "_retries": list(self.retries),
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
        attempt=int(row["attempt"]),
        retries=tuple(row["retries"] or ()),
    )


# Built once: a statement built per request (`insert().values(...)`, its eleven bind parameters
# and its cache key) cost ~1 ms of CPU each POST (bench/bench_api.py's API CPU per POST).
INSERT_REQUEST = requests_table.insert()


def new_request(
    request: Mapping[str, Any], collection_id: str, item_id: str, idempotency_key: str | None
) -> dict[str, Any]:
    """The row of a request the API accepts (its id is `["id"]`)."""
    now = datetime.now(UTC)
    return {
        "id": str(uuid.uuid4()),
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


def first_of_key(
    key: str, request: Mapping[str, Any], found: list[tuple[str, Mapping[str, Any]]]
) -> str | None:
    """The id of the request (id, body) found under `key`, None if none was; raises
    IdempotencyKeyReused when its body differs from `request`."""
    if not found:
        return None
    first_id, body = found[0]
    if dict(body) != dict(request):
        raise IdempotencyKeyReused(key, first_id)
    return first_id


def _request_lock(request_id: str) -> str:
    return f"ingestion-request:{request_id}"


def _held_elsewhere(name: str) -> None:
    """`try_processing` does not wait: nothing to say."""


class RequestStore:
    """The requests table over one engine; `close()` (or `with`) releases its connections."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_engine(database_url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._locks_dsn = database_url  # psycopg takes the postgresql:// URL as it is
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
            self._add_missing_columns()
            return
        try:
            with self._write() as connection:
                metadata.create_all(connection)
        except (OperationalError, ProgrammingError, IntegrityError):
            # Another process created it at the same moment; anything else fails below.
            if not sa.inspect(self.engine).has_table(requests_table.name):
                raise

    def _missing_columns(self) -> list[sa.Column[Any]]:
        present = {c["name"] for c in sa.inspect(self.engine).get_columns(requests_table.name)}
        return [column for column in requests_table.columns if column.name not in present]

    def _add_missing_columns(self) -> None:
        """A table created by an older release gets the columns added since (each nullable or
        with a server default)."""
        for column in self._missing_columns():
            kind = column.type.compile(dialect=self.engine.dialect)
            default = f" DEFAULT {column.server_default.arg}" if column.server_default else ""  # type: ignore[attr-defined]
            not_null = " NOT NULL" if not column.nullable else ""
            statement = (
                f"ALTER TABLE {requests_table.name} ADD COLUMN {column.name} {kind}"
                f"{not_null}{default}"
            )
            try:
                with self._write() as connection:
                    connection.exec_driver_sql(statement)
            except (OperationalError, ProgrammingError):
                # Another process added it at the same moment; anything else fails below.
                if column in self._missing_columns():
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
        values = new_request(request, collection_id, item_id, idempotency_key)
        try:
            with self._write() as connection:
                connection.execute(INSERT_REQUEST, values)
        except IntegrityError:
            first = self.repeated(idempotency_key, request) if idempotency_key else None
            if first is None:
                raise
            return first, False
        return values["id"], True

    def repeated(self, key: str, request: Mapping[str, Any]) -> str | None:
        """The id of the request stored under `key`, None if there is none; raises
        IdempotencyKeyReused when that request's body differs from `request`."""
        found = self._read(sa.select(requests_table).where(requests_table.c.idempotency_key == key))
        return first_of_key(key, request, [(r.id, r.request) for r in found])

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
        return self._in_state("accepted", limit)

    def running(self, limit: int) -> list[StoredRequest]:
        """Requests a run has started and not finished, oldest first."""
        return self._in_state("running", limit)

    def _in_state(self, state: State, limit: int) -> list[StoredRequest]:
        return self._read(
            sa.select(requests_table)
            .where(requests_table.c.state == state)
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

    def start(self, request_id: str, run_id: str, attempt: int | None) -> bool:
        """Make `run_id` the request's current run, if it is the run of the request's current
        attempt and the request still waits for it; a run of no attempt (a re-execution, a run
        launched by hand) takes over in any state. Whether the run may go on. Call it holding
        `processing(request_id)`."""
        table = requests_table.c
        condition = (
            sa.true()
            if attempt is None
            else sa.and_(table.state == "accepted", table.attempt == attempt)
        )
        return self._update(
            request_id,
            condition,
            state="running",
            operation=GETCOLLECTION,
            step=None,
            status="ok",
            description=f"run {run_id} started",
            run_id=run_id,
            item_url=None,
        )

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

    def _unchanged(self, seen: StoredRequest) -> Any:
        """The request is still as `seen` (its state, attempt and run)."""
        table = requests_table.c
        run = table.run_id.is_(None) if seen.run_id is None else table.run_id == seen.run_id
        return sa.and_(table.state == seen.state, table.attempt == seen.attempt, run)

    def retry(self, seen: StoredRequest, run_id: str, reason: str) -> bool:
        """The request's run `run_id` ended without an outcome: wait for a run of the next
        attempt, or fail after MAX_ATTEMPTS. Only if the request is still as `seen`; call it
        holding `try_processing`. Whether the request changed."""
        retries = [*seen.retries, {"attempt": seen.attempt, "run_id": run_id, "reason": reason}]
        if seen.attempt >= MAX_ATTEMPTS:
            return self.give_up(
                seen, run_id, f"{reason} (attempt {seen.attempt} of {MAX_ATTEMPTS}: given up)"
            )
        attempt = seen.attempt + 1
        return self._update(
            seen.id,
            self._unchanged(seen),
            state="accepted",
            attempt=attempt,
            retries=retries,
            operation=RECEIVED,
            step=None,
            status="ok",
            description=f"retrying (attempt {attempt} of {MAX_ATTEMPTS}): {reason}",
            run_id=None,
            item_url=None,
        )

    def give_up(self, seen: StoredRequest, run_id: str, reason: str) -> bool:
        """Fail the request, still as `seen`, with the reason of its run `run_id`'s end."""
        retries = [*seen.retries, {"attempt": seen.attempt, "run_id": run_id, "reason": reason}]
        return self._update(
            seen.id,
            self._unchanged(seen),
            state="failed",
            status="error",
            description=reason,
            run_id=run_id,
            retries=retries,
        )

    def _request_locks(self, wait_seconds: float) -> Locks:
        if self.is_sqlite:
            database = Path(str(self.engine.url.database))
            return FileLocks(database.with_name(database.name + ".locks"), wait_seconds)
        return PostgresLocks(self._locks_dsn, wait_seconds)

    @contextlib.contextmanager
    def processing(self, request_id: str, on_wait: WaitCallback) -> Iterator[None]:
        """Hold the request's lock while processing it (waiting for another holder): a
        PostgreSQL session lock, or a file lock beside a SQLite store; a killed holder's lock
        ends with its process."""
        with self._request_locks(DEFAULT_WAIT_SECONDS).hold(_request_lock(request_id), on_wait):
            yield

    @contextlib.contextmanager
    def try_processing(self, request_id: str) -> Iterator[bool]:
        """The request's lock if nobody holds it: whether it was taken."""
        with contextlib.ExitStack() as stack:
            try:
                lock = self._request_locks(0).hold(_request_lock(request_id), _held_elsewhere)
                stack.enter_context(lock)
            except LockError:
                yield False
                return
            yield True

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold a lock named `name` across every process sharing this database: a PostgreSQL
        advisory lock, or SQLite's write lock (which also pauses other writers meanwhile, so
        the holder must not write to this store until it releases it)."""
        with self._write() as connection:
            if not self.is_sqlite:
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key(name))))
            yield
