"""Partition locks (a file lock, a PostgreSQL advisory lock) and per-run staging folders, with
real processes: a second holder waits, a killed holder releases, a dead run's folder goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bq_pipelines.lib.errors import PipelineError
from bq_pipelines.lib.locks import FileLocks, LockError, Locks, PostgresLocks
from bq_pipelines.lib.staging import remove_abandoned, run_staging

HOLDER = """
import sys
from pathlib import Path
from bq_pipelines.lib.locks import FileLocks, PostgresLocks
kind, where, name = sys.argv[1:4]
locks = FileLocks(Path(where)) if kind == "file" else PostgresLocks(where)
with locks.hold(name):
    print("held", flush=True)
    sys.stdin.read()  # until killed or stdin closes
"""


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.services)])
def lock_kind(request, tmp_path: Path) -> tuple[str, str]:
    if request.param == "file":
        return "file", str(tmp_path / "locks")
    return "postgres", request.getfixturevalue("services_env")["BQ_PGSTAC_DSN"]


def make_locks(kind: str, where: str, wait_seconds: float = 60) -> Locks:
    if kind == "file":
        return FileLocks(Path(where), wait_seconds)
    return PostgresLocks(where, wait_seconds)


def hold_in_process(kind: str, where: str, name: str) -> subprocess.Popen[str]:
    """Another process holding the lock `name` (released when it dies)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, kind, where, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def in_thread(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action)
    thread.start()
    return thread


def test_a_second_holder_waits_for_the_first(lock_kind, unique_id: str) -> None:
    kind, where = lock_kind
    name = f"partition:demo-{unique_id}/landcover"
    holder = hold_in_process(kind, where, name)
    waited = threading.Event()
    entered = threading.Event()

    def second() -> None:
        with make_locks(kind, where).hold(name, on_wait=lambda _: waited.set()):
            entered.set()

    thread = in_thread(second)
    assert waited.wait(30)
    assert not entered.is_set()  # still held by the other process
    # Another name is independent.
    with make_locks(kind, where).hold(name + "-other"):
        pass
    holder.stdin.close()  # type: ignore[union-attr]
    holder.wait(30)
    thread.join(30)
    assert entered.is_set()


def test_a_killed_holder_releases_its_lock(lock_kind, unique_id: str) -> None:
    kind, where = lock_kind
    name = f"partition:demo-{unique_id}/elevation"
    holder = hold_in_process(kind, where, name)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(30)
    with make_locks(kind, where, wait_seconds=30).hold(name):
        pass  # taken: the dead holder's lock did not outlive it


def test_a_lock_held_too_long_is_a_clear_error(lock_kind, unique_id: str) -> None:
    kind, where = lock_kind
    name = f"partition:demo-{unique_id}/temperature"
    holder = hold_in_process(kind, where, name)
    try:
        locks = make_locks(kind, where, wait_seconds=1)
        with (
            pytest.raises(LockError, match="still held by another run after 1 s"),
            locks.hold(name),
        ):
            pass
    finally:
        holder.kill()
        holder.wait(30)


def test_an_unreachable_database_is_a_lock_error_without_password() -> None:
    locks = PostgresLocks("postgresql://bq:s3cret-pw@127.0.0.1:9/bq", wait_seconds=1)
    with (
        pytest.raises(LockError, match="cannot connect to PostgreSQL") as caught,
        locks.hold("partition:x/y"),
    ):
        pass
    assert "s3cret-pw" not in str(caught.value)


# ------------------------------------------------------------------------ staging folders


def test_run_staging_is_removed_on_success_and_on_failure(tmp_path: Path) -> None:
    with run_staging(tmp_path, "run-a") as folder:
        (folder / "partition" / "source.tif").parent.mkdir()
        (folder / "partition" / "source.tif").write_bytes(b"x")
        assert folder == tmp_path / "run-run-a"
    assert not folder.exists()
    with pytest.raises(RuntimeError), run_staging(tmp_path, "run-b") as failing:
        (failing / "x").write_bytes(b"x")
        raise RuntimeError("conversion failed")
    assert not failing.exists()
    with (
        pytest.raises(PipelineError, match="cannot name a staging folder"),
        run_staging(tmp_path, "../escape"),
    ):
        pass


def test_a_dead_runs_folder_is_removed_a_live_one_kept(tmp_path: Path) -> None:
    # A live run in another process holds its folder's lock; a killed one left its folder.
    live = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from bq_pipelines.lib.staging import "
            "run_staging\nwith run_staging(Path(sys.argv[1]), 'live') as f:\n"
            "    (f / 'p').mkdir(); print('held', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert live.stdout is not None and live.stdout.readline().strip() == "held"
    killed = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bq_pipelines.lib.staging import "
            "run_staging\nwith run_staging(Path(sys.argv[1]), 'killed') as f:\n"
            "    (f / 'big.tif').write_bytes(b'x' * 1000); print('held', flush=True); "
            "time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert killed.stdout is not None and killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait(30)
    assert (tmp_path / "run-killed" / "big.tif").exists()

    with run_staging(tmp_path, "next"):  # the next run sweeps
        assert not (tmp_path / "run-killed").exists()
        assert (tmp_path / "run-live" / "p").is_dir()
    assert remove_abandoned(tmp_path) == []
    live.stdin.close()  # type: ignore[union-attr]
    live.wait(30)
    assert not (tmp_path / "run-live").exists()
