"""Atomic file writes: readers (and crashed writers) never leave or see half a file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

COPY_CHUNK_BYTES = 1024 * 1024
# What a file published to the object store or the catalog needs: readable by a web server or a
# reader running as another user. mkstemp creates files 0600.
PUBLISHED_FILE_MODE = 0o644
# What a file holding a secret (credentials, a connection string) needs: its owner's only.
PRIVATE_FILE_MODE = 0o600


def write_atomically(
    path: Path,
    write: Callable[[BinaryIO], None],
    temp_prefix: str = ".",
    mode: int = PUBLISHED_FILE_MODE,
) -> None:
    """Call `write` on a temporary file beside `path`, fsync it, then rename it over `path`.

    The temporary file is on the same filesystem (so the rename is atomic) and is removed if
    anything fails; its name starts with `temp_prefix` + the file name. The file ends up with
    `mode` (0644; PRIVATE_FILE_MODE for a secret), whatever the file it replaces had.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{temp_prefix}{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomically(
    path: Path, text: str, temp_prefix: str = ".", mode: int = PUBLISHED_FILE_MODE
) -> None:
    def write(handle: BinaryIO) -> None:
        handle.write(text.encode("utf-8"))

    write_atomically(path, write, temp_prefix, mode)


def copy_atomically(source: Path, path: Path, temp_prefix: str = ".") -> None:
    def copy(handle: BinaryIO) -> None:
        with source.open("rb") as src:
            shutil.copyfileobj(src, handle, length=COPY_CHUNK_BYTES)

    write_atomically(path, copy, temp_prefix)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created, with its folder, if missing): one process
    at a time on this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
