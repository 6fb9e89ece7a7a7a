"""Named exclusive locks, so that two runs of one partition never interleave their writes.

Dagster's concurrency pools limit an op or an asset, not a partition: two runs of the same
partition (a backfill beside a manual run, two CLI processes) would both be allowed. These locks
are held by the process that publishes a partition and released when it ends, however it ends
(a killed process loses its file lock or its database session, so no lock outlives it):

- `FileLocks`: `flock` on a file per name, for the embedded defaults (one machine, local store
  and static catalog);
- `PostgresLocks`: a session-level advisory lock in PostgreSQL, for workers on several machines
  (the pgstac database every writer already shares, `BQ_PGSTAC_DSN`).

A second holder waits (polling, so a wait can time out with a clear error) and then proceeds.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from bq_pipelines.lib.errors import PipelineError
from bq_pipelines.lib.hashing import sha256_bytes

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
DEFAULT_WAIT_SECONDS = 6 * 3600.0  # longer than any partition's work
PG_CONNECT_TIMEOUT_S = 10


def partition_lock_name(dataset_id: str, partition_key: str) -> str:
    """The lock every writer of a dataset's partition takes (runs, the audit's repairs)."""
    return f"partition:{dataset_id}/{partition_key}"


class LockError(PipelineError):
    """A lock could not be taken: the database is unreachable, or another holder kept it too
    long."""


WaitCallback = Callable[[str], None]


def _no_wait_callback(name: str) -> None:
    logger.info("waiting for the lock on %s (held by another run)", name)


class Locks(ABC):
    """Exclusive locks by name; `hold` waits up to `wait_seconds` for another holder."""

    def __init__(self, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> None:
        self.wait_seconds = wait_seconds

    @abstractmethod
    def hold(
        self, name: str, on_wait: WaitCallback = _no_wait_callback
    ) -> contextlib.AbstractContextManager[None]:
        """Hold the lock `name` for the `with` block; `on_wait(name)` once if it must wait."""

    def _wait_for(self, name: str, try_acquire: Callable[[], bool], on_wait: WaitCallback) -> None:
        deadline = time.monotonic() + self.wait_seconds
        waited = False
        while not try_acquire():
            if not waited:
                on_wait(name)
                waited = True
            if time.monotonic() > deadline:
                raise LockError(
                    f"lock {name!r}: still held by another run after {self.wait_seconds:.0f} s; "
                    "is a run of the same partition stuck? (cancel it, then retry)"
                )
            time.sleep(POLL_SECONDS)


class FileLocks(Locks):
    """`flock` on `root/<sha256 of name>.lock` (names may hold any character)."""

    def __init__(self, root: Path, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> None:
        super().__init__(wait_seconds)
        self.root = Path(root)

    @contextlib.contextmanager
    def hold(self, name: str, on_wait: WaitCallback = _no_wait_callback) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{sha256_bytes(name)[:32]}.lock"
        with path.open("a") as handle:

            def try_acquire() -> bool:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
                return True

            self._wait_for(name, try_acquire, on_wait)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (what pg_advisory_lock takes)."""
    return int.from_bytes(
        bytes.fromhex(sha256_bytes(f"bq-pipelines:{name}")[:16]), "big", signed=True
    )


class PostgresLocks(Locks):
    """Session-level advisory locks on a connection of their own, closed on release."""

    def __init__(self, dsn: str, wait_seconds: float = DEFAULT_WAIT_SECONDS) -> None:
        super().__init__(wait_seconds)
        self._dsn = dsn  # may hold a password: never in messages

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self._dsn, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S)
        except psycopg.Error as error:
            # psycopg's message names host and database, never the password.
            raise LockError(f"cannot connect to PostgreSQL for partition locks: {error}") from error

    @contextlib.contextmanager
    def hold(self, name: str, on_wait: WaitCallback = _no_wait_callback) -> Iterator[None]:
        key = advisory_key(name)
        with self._connect() as conn:

            def try_acquire() -> bool:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                return bool(row and row[0])

            self._wait_for(name, try_acquire, on_wait)
            try:
                yield
            finally:
                # Closing the session releases it too; unlocking first frees it at once even if
                # the close is slow.
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
