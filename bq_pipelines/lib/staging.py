"""Staging folders of runs: `<work dir>/<run id>/`, one per run, a folder per partition inside.

Two runs never share a staging folder, so they cannot delete or overwrite each other's
downloads. A run's folder is removed when the run's step ends, however it ends; a folder left by
a process that was killed (`kill -9`, a lost machine) is removed by the next run on the same
work dir. A live run holds an `flock` on `<run folder>/.lock`: a folder whose lock can be taken
belongs to a dead process.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from bq_pipelines.lib.errors import PipelineError

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_RUN_FOLDER = re.compile(r"^run-[A-Za-z0-9_-]{1,100}$")


def run_folder_name(run_id: str) -> str:
    name = f"run-{run_id}"
    if not _RUN_FOLDER.match(name):
        raise PipelineError(f"run id {run_id!r} cannot name a staging folder")
    return name


@contextlib.contextmanager
def run_staging(work_dir: Path, run_id: str) -> Iterator[Path]:
    """The run's own staging folder, held for the `with` block and removed after it."""
    folder = Path(work_dir) / run_folder_name(run_id)
    with _locked_folder(folder):
        try:
            remove_abandoned(Path(work_dir))
            yield folder
        finally:
            # Removed while still locked, so a sweeper in another run never sees it half-gone
            # and unlocked.
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _locked_folder(folder: Path) -> Iterator[None]:
    for _ in range(10):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_NAME
        with path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            # A sweeper may have taken the fresh lock file before us and removed the folder:
            # then the lock we hold guards nothing; start again.
            if current == os.fstat(lock.fileno()).st_ino:
                yield
                return
    raise PipelineError(f"cannot lock the staging folder {folder}")


def remove_abandoned(work_dir: Path) -> list[Path]:
    """Remove run folders whose run process is gone (their lock is free); returns them."""
    removed = []
    for folder in sorted(work_dir.glob("run-*")):
        if not (folder.is_dir() and _RUN_FOLDER.match(folder.name)):
            continue
        try:
            # Not created here: a folder without its lock is being created (or is not ours).
            lock = (folder / LOCK_NAME).open("r")
        except OSError:
            continue
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        logger.info("removed %d staging folders of dead runs: %s", len(removed), removed)
    return removed
