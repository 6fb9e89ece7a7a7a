"""The pgstac database the STAC API serves: dumped with pg_dump -Fc in one snapshot (counted in
that same snapshot), restored through psql with pgstac's search_path fix, swapped by name.

A plain `pg_restore` of a pgstac database loses `pgstac.collections` (stac-utils/pgstac#64):
pg_dump empties `search_path` and pgstac's functions call PostGIS unqualified. The restore
script is piped through psql with that one line rewritten to `pgstac, public`.
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

import psycopg

from bq_pipelines.backup import postgres
from bq_pipelines.backup.backend import CatalogBackend, Dump, Progress, log_progress
from bq_pipelines.backup.manifest import CatalogState, catalog_state
from bq_pipelines.backup.postgres import PgTools, Server, Version
from bq_pipelines.lib.errors import BackupError
from bq_pipelines.lib.postgres_dsn import parse_dsn

SEARCH_PATH_LINE = b"SELECT pg_catalog.set_config('search_path', '', false);\n"
FIXED_SEARCH_PATH_LINE = b"SELECT pg_catalog.set_config('search_path', 'pgstac, public', false);\n"
ID_BATCH_ROWS = 10_000
STDERR_TAIL_CHARS = 2000
FEED_CHUNK_BYTES = 1024 * 1024
PROGRESS_STEP = 0.1  # report restore progress every 10 % of the archive


class PgstacCatalog(CatalogBackend):
    kind = "pgstac"
    suffix = ".dump"
    content_type = "application/vnd.postgresql.custom-dump"

    def __init__(self, dsn: str, tools: PgTools | None = None) -> None:
        parse_dsn(dsn)  # a bad DSN fails here, not half-way through a backup
        self.server = Server(dsn)
        self.tools = tools or PgTools()

    @property
    def name(self) -> str:
        return self.server.database

    @property
    def default_target(self) -> str:
        return self.server.database

    def describe(self, copy: str | None = None) -> str:
        return self.server.describe(copy)

    # ---------------------------------------------------------------------------- dump

    @contextmanager
    def open_dump(self) -> Iterator[Dump]:
        # Autocommit: the checks leave no transaction open, so the snapshot's transaction
        # below can still be given its isolation level.
        with self.server.connect(autocommit=True) as conn:
            server = postgres.server_version(conn)
            pg_dump, pg_dump_version = self.tools.require(
                "pg_dump", server, f"the server {self.describe()}"
            )
            pgstac_version = require_pgstac(conn, self.describe())
            # One snapshot for the counts and the dump: items written meanwhile (a backfill)
            # are in neither, so the recorded counts are exactly what the dump restores.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                row = conn.execute("SELECT pg_export_snapshot()").fetchone()
                assert row is not None
                state = pgstac_state(conn)
                command = [
                    pg_dump,
                    "--format=custom",
                    f"--snapshot={row[0]}",
                    f"--dbname={self.server.conninfo()}",
                ]
                with tempfile.TemporaryFile() as stderr:
                    process = subprocess.Popen(
                        command, stdout=subprocess.PIPE, stderr=stderr, env=self.server.tool_env()
                    )
                    try:
                        yield Dump(
                            stream=_CheckedOutput(process, stderr, f"pg_dump of {self.describe()}"),
                            state=state,
                            versions={
                                "pg_dump": str(pg_dump_version),
                                "server": str(server),
                                "pgstac": pgstac_version,
                            },
                        )
                    finally:
                        _stop(process)

    # ------------------------------------------------------------------------- restore

    def restore_copy(
        self,
        archive: Path,
        copy: str,
        *,
        like: str | None = None,
        made_by: str | None = None,
        progress: Progress = log_progress,
    ) -> CatalogState:
        postgres.check_name(copy)
        archive_version = Version.parse(made_by) if made_by else self.server.version()
        why = "the pg_dump that wrote the backup" if made_by else f"the server {self.describe()}"
        pg_restore, _ = self.tools.require("pg_restore", archive_version, why)
        psql = self.tools.path("psql", f"the server is {self.describe()}")
        if postgres.database_exists(self.server, copy):
            raise BackupError(f"{self.describe(copy)} already exists: refusing to restore over it")
        postgres.create_database(self.server, copy, owner_like=like)
        try:
            self._run_restore(pg_restore, psql, archive, copy, progress)
            return self.state(copy)
        except BaseException:
            postgres.drop_database(self.server, copy)
            raise

    def _run_restore(
        self, pg_restore: str, psql: str, archive: Path, copy: str, progress: Progress
    ) -> None:
        """pg_restore (fed from the archive) | search_path fix | psql, in one transaction."""
        env = self.server.tool_env()
        size = max(archive.stat().st_size, 1)
        with tempfile.TemporaryFile() as restore_err, tempfile.TemporaryFile() as psql_err:
            restore = subprocess.Popen(
                [pg_restore, "--file=-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=restore_err,
                env=env,
            )
            sink = subprocess.Popen(
                [
                    psql,
                    "--no-psqlrc",
                    "--quiet",
                    "--set=ON_ERROR_STOP=1",
                    "--single-transaction",
                    "--output=/dev/null",
                    f"--dbname={self.server.conninfo(copy)}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=psql_err,
                env=env,
            )
            fed = [0]
            feeder = threading.Thread(
                target=_feed, args=(archive, restore.stdin, fed), name="pg_restore-feed"
            )
            feeder.start()
            fixed = 0
            reported = 0.0
            completed = False
            try:
                assert restore.stdout is not None and sink.stdin is not None
                for line in restore.stdout:
                    if line == SEARCH_PATH_LINE:
                        line = FIXED_SEARCH_PATH_LINE
                        fixed += 1
                    sink.stdin.write(line)
                    if fed[0] / size >= reported + PROGRESS_STEP:
                        reported = fed[0] / size
                        progress(f"restoring into {copy}: {reported:.0%} of the archive read")
                completed = True
            except BrokenPipeError:
                pass  # psql stopped (ON_ERROR_STOP): its exit status and stderr say why
            finally:
                if completed:
                    restore.wait()
                else:
                    _stop(restore)  # it may be blocked writing to us: the feeder then stops too
                feeder.join()
                with suppress(BrokenPipeError):
                    sink.stdin.close()  # type: ignore[union-attr]
                sink.wait()
            # psql first: when it stops, pg_restore is stopped by us and says nothing useful.
            failed = [(sink, psql_err, "psql")]
            if completed:
                failed.insert(0, (restore, restore_err, "pg_restore"))
            for process, stderr, what in failed:
                if process.returncode != 0:
                    raise BackupError(
                        f"restoring {archive.name} into {self.describe(copy)} failed: {what} "
                        f"exited with {process.returncode}: {_tail(stderr)}"
                    )
            if fixed == 0:
                # Without the fix pgstac.collections is silently lost (pgstac#64).
                raise BackupError(
                    f"restoring {archive.name}: pg_restore's script has no search_path line "
                    "to fix (a pg_restore whose output this project does not know)"
                )

    def state(self, copy: str) -> CatalogState:
        with self.server.connect(copy) as conn:
            require_pgstac(conn, self.describe(copy))
            return pgstac_state(conn)

    def exists(self, copy: str) -> bool:
        return postgres.database_exists(self.server, copy)

    def remove_copy(self, copy: str) -> None:
        postgres.drop_database(self.server, copy)

    def swap(self, target: str, new: str, before: str) -> None:
        try:
            postgres.swap_databases(self.server, target, new, before)
        except (psycopg.Error, BackupError) as exc:
            raise BackupError(
                f"swapping {new} in place of {self.describe(target)} failed, {target} is "
                f"unchanged: {exc}\n{self.manual_swap(target, new, before)}"
            ) from exc

    def manual_swap(self, target: str, new: str, before: str) -> str:
        return postgres.manual_swap_steps(self.server, target, new, before)


def require_pgstac(conn: psycopg.Connection, where: str) -> str:
    """pgstac's version; BackupError if the database is not a pgstac database."""
    row = conn.execute("SELECT to_regproc('pgstac.get_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise BackupError(
            f"{where} is not a pgstac database (no pgstac schema): BQ_PGSTAC_DSN must name "
            "the database the STAC API serves"
        )
    version = conn.execute("SELECT pgstac.get_version()").fetchone()
    return str(version[0]) if version else "unknown"


def pgstac_state(conn: psycopg.Connection) -> CatalogState:
    """Counts and the id checksum, read in the connection's current transaction."""
    row = conn.execute("SELECT count(*) FROM pgstac.collections").fetchone()
    collections = int(row[0]) if row else 0
    # A server-side cursor: millions of ids never sit in memory at once. COLLATE "C" sorts by
    # code point, as Python does, whatever the database's locale.
    with conn.cursor(name="bq_backup_item_ids") as cursor:
        cursor.itersize = ID_BATCH_ROWS
        cursor.execute(
            "SELECT collection, id FROM pgstac.items "
            'ORDER BY collection COLLATE "C", id COLLATE "C"'
        )
        return catalog_state(collections, ((str(c), str(i)) for c, i in cursor))


class _CheckedOutput:
    """A process's stdout that raises at EOF when the process failed, so that an upload
    reading it is aborted instead of storing a truncated dump."""

    def __init__(self, process: subprocess.Popen[bytes], stderr: IO[bytes], what: str) -> None:
        assert process.stdout is not None
        self._stdout = process.stdout
        self._process = process
        self._stderr = stderr
        self._what = what

    def read(self, size: int = -1) -> bytes:
        chunk = self._stdout.read(size)
        if not chunk:
            returncode = self._process.wait()
            if returncode != 0:
                raise BackupError(f"{self._what} failed ({returncode}): {_tail(self._stderr)}")
        return chunk


def _feed(archive: Path, stdin: IO[bytes] | None, fed: list[int]) -> None:
    assert stdin is not None
    try:
        with archive.open("rb") as source:
            while chunk := source.read(FEED_CHUNK_BYTES):
                stdin.write(chunk)
                fed[0] += len(chunk)
    except BrokenPipeError:
        pass  # pg_restore stopped: its exit status says why
    finally:
        with suppress(BrokenPipeError):
            stdin.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _tail(stderr: IO[bytes]) -> str:
    stderr.seek(0)
    text = stderr.read().decode(errors="replace").strip()
    return text[-STDERR_TAIL_CHARS:] or "(no message)"
