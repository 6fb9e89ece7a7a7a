"""Declarations whose partitions all rendered without a problem, recorded on disk so that the
next process loading the same declaration with the same code skips rendering them again.

Rendering every partition is the slow part of a code location's load (chelsa-monthly's 4,920
partitions: 0.2-0.4 s of CPU, a sixth of the load), and every code server, run worker and CLI
loads the code location. A record is an empty file whose name hashes the declaration (as JSON),
the source of the code that checks it (this package and `lib/`), the facts of `shared/` and the
Python version: any change to one of them is another name, so a record never vouches for other
code. Only successes are recorded: a declaration that fails is rendered, and refused, at every
load. A record that cannot be written or read (a read-only disk, no home folder) only means
rendering again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from functools import cache
from pathlib import Path

# Declarations with fewer partitions are rendered at each load: a few milliseconds, not worth
# a file each (the tests validate thousands of small declarations).
RECORDED_FROM_PARTITIONS = 500
# Records older than this are removed when one is written (each code change leaves its own).
RECORD_LIFETIME_S = 7 * 24 * 3600
_PACKAGE = Path(__file__).resolve().parents[1]
# What a check depends on besides the declaration: the code that renders and checks it, and the
# facts declarations reference (shared/: hosts, grids).
_CHECKING_CODE = (("datasets", "*.py"), ("lib", "*.py"), ("shared", "*"))


def records_dir() -> Path:
    """The user's cache folder (XDG's), as pip and pre-commit keep theirs."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bq-pipelines" / "rendered-declarations"


@cache
def _code_fingerprint() -> bytes:
    digest = hashlib.sha256(sys.version.encode())
    for folder, pattern in _CHECKING_CODE:
        for path in sorted(p for p in (_PACKAGE / folder).rglob(pattern) if p.is_file()):
            digest.update(str(path.relative_to(_PACKAGE)).encode())
            digest.update(path.read_bytes())
    return digest.digest()


def _record(declaration_json: str) -> Path:
    digest = hashlib.sha256(_code_fingerprint())
    digest.update(declaration_json.encode())
    return records_dir() / digest.hexdigest()


def rendered_before(declaration_json: str) -> bool:
    """Whether this declaration rendered without a problem under this code."""
    try:
        return _record(declaration_json).is_file()
    except (OSError, RuntimeError):  # RuntimeError: no home folder
        return False


def record_rendered(declaration_json: str) -> None:
    """Record that this declaration rendered without a problem under this code."""
    with contextlib.suppress(OSError, RuntimeError):
        record = _record(declaration_json)
        record.parent.mkdir(parents=True, exist_ok=True)
        _remove_old_records(record.parent)
        record.touch()


def _remove_old_records(folder: Path) -> None:
    oldest_kept = time.time() - RECORD_LIFETIME_S
    for old in folder.iterdir():
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < oldest_kept:
                old.unlink()
