"""The interface every kind of catalog implements to be backed up, verified and restored.

Copies are named by strings the backend understands: database names for pgstac, folder paths
for a static catalog. Restore and verification compose them as `<target>_<label>`, so a copy
always sits beside its target (same server, same file system) and can be swapped in by renaming.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from bq_pipelines.backup.manifest import BackupKind, CatalogState
from bq_pipelines.lib.storage import ByteStream

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


def log_progress(message: str) -> None:
    logger.info(message)


@dataclass
class Dump:
    """A dump being produced: read `stream` to the end (it raises there if the dump failed)."""

    stream: ByteStream
    state: CatalogState  # what the dump holds, counted in the dump's own snapshot
    versions: dict[str, str] = field(default_factory=dict)


class CatalogBackend(ABC):
    kind: BackupKind
    suffix: str
    content_type: str

    @property
    @abstractmethod
    def name(self) -> str:
        """The catalog's name in backup keys: the database or folder name."""

    @property
    @abstractmethod
    def default_target(self) -> str:
        """What a restore replaces unless told otherwise: the configured catalog."""

    @abstractmethod
    def describe(self, copy: str | None = None) -> str:
        """The catalog (or one copy of it) for messages, without secrets."""

    @abstractmethod
    def open_dump(self) -> AbstractContextManager[Dump]:
        """Start a consistent dump of the catalog; it stops when the context exits."""

    @abstractmethod
    def restore_copy(
        self,
        archive: Path,
        copy: str,
        *,
        like: str | None = None,
        made_by: str | None = None,
        progress: Progress = log_progress,
    ) -> CatalogState:
        """Restore `archive` into the new copy `copy` and count what it holds.

        `like`: an existing copy whose ownership the new one takes; `made_by`: the version of
        the tool that wrote the archive. On failure nothing of `copy` is left.
        """

    @abstractmethod
    def state(self, copy: str) -> CatalogState:
        """What a copy holds now."""

    @abstractmethod
    def exists(self, copy: str) -> bool: ...

    @abstractmethod
    def remove_copy(self, copy: str) -> None:
        """Remove a copy; nothing happens if it does not exist."""

    @abstractmethod
    def swap(self, target: str, new: str, before: str) -> None:
        """Put `new` in place of `target`, keeping the old one as `before` (if there was one).

        On failure `target` is as it was and the error says how to finish by hand.
        """

    @abstractmethod
    def manual_swap(self, target: str, new: str, before: str) -> str:
        """The steps to swap by hand, and to roll a swap back."""
