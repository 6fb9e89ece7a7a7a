"""The static catalog folder (the embedded default): archived as tar.gz under the publishers'
write lock, restored by extraction beside the folder, swapped by renaming."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from bq_pipelines.backup.backend import CatalogBackend, Dump, Progress, log_progress
from bq_pipelines.backup.manifest import CatalogState, catalog_state
from bq_pipelines.lib.catalog import StaticCatalogPublisher
from bq_pipelines.lib.errors import BackupError

CATALOG_FILE = "catalog.json"
COLLECTION_FILE = "collection.json"


class StaticCatalog(CatalogBackend):
    kind = "static"
    suffix = ".tar.gz"
    content_type = "application/gzip"

    def __init__(self, root: Path, work_dir: Path) -> None:
        self.root = Path(root).absolute()
        self.work_dir = Path(work_dir).absolute()

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def default_target(self) -> str:
        return str(self.root)

    def describe(self, copy: str | None = None) -> str:
        return f"static catalog {copy or self.root}"

    @contextmanager
    def open_dump(self) -> Iterator[Dump]:
        if not (self.root / CATALOG_FILE).is_file():
            raise BackupError(
                f"{self.root} holds no {CATALOG_FILE}: no static catalog to back up "
                "(BQ_CATALOG_DIR; set BQ_PGSTAC_DSN to back up a pgstac database)"
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # A temporary file, not a pipe: the archive is small next to the COGs it describes,
        # and holding the write lock must not depend on how fast the upload goes.
        with tempfile.TemporaryFile(dir=self.work_dir, prefix="catalog-backup-") as archive:
            with StaticCatalogPublisher(self.root).write_lock():
                files = catalog_files(self.root)
                state = static_state(files)
                with tarfile.open(fileobj=archive, mode="w:gz") as tar:
                    for relative in files:
                        tar.add(self.root / relative, arcname=relative.as_posix())
            archive.seek(0)
            yield Dump(stream=archive, state=state, versions={"format": "tar.gz"})

    def restore_copy(
        self,
        archive: Path,
        copy: str,
        *,
        like: str | None = None,
        made_by: str | None = None,
        progress: Progress = log_progress,
    ) -> CatalogState:
        folder = Path(copy)
        if folder.exists():
            raise BackupError(f"{folder} already exists: refusing to restore over it")
        progress(f"extracting {archive.name} into {folder}")
        try:
            folder.mkdir(parents=True)
            with tarfile.open(archive, mode="r:gz") as tar:
                # The "data" filter refuses absolute paths, `..`, links out and devices.
                tar.extractall(folder, filter="data")
            if not (folder / CATALOG_FILE).is_file():
                raise BackupError(f"{archive.name} holds no {CATALOG_FILE}")
            return self.state(copy)
        except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
            self.remove_copy(copy)
            raise BackupError(f"extracting {archive.name} into {folder} failed: {exc}") from exc
        except BaseException:
            self.remove_copy(copy)
            raise

    def state(self, copy: str) -> CatalogState:
        if not (Path(copy) / CATALOG_FILE).is_file():
            raise BackupError(f"{copy} is not a static catalog (no {CATALOG_FILE})")
        return static_state(catalog_files(Path(copy)))

    def exists(self, copy: str) -> bool:
        return Path(copy).exists()

    def remove_copy(self, copy: str) -> None:
        if Path(copy).exists():
            shutil.rmtree(copy)

    def swap(self, target: str, new: str, before: str) -> None:
        moved = False
        try:
            if Path(target).exists():
                os.rename(target, before)
                moved = True
            os.rename(new, target)
        except OSError as exc:
            if moved:
                os.rename(before, target)
            raise BackupError(
                f"swapping {new} in place of {target} failed, {target} is unchanged: {exc}\n"
                f"{self.manual_swap(target, new, before)}"
            ) from exc

    def manual_swap(self, target: str, new: str, before: str) -> str:
        return (
            f"To swap by hand: mv {target} {before} && mv {new} {target}\n"
            f"To discard the restored copy instead: rm -r {new}\n"
            f"To roll a swap back: mv {target} {new} && mv {before} {target}"
        )


def catalog_files(root: Path) -> list[PurePosixPath]:
    """Every file of the catalog, relative and sorted; hidden files (the lock, temporary files
    of atomic writes) are not part of it."""
    files = []
    for path in root.rglob("*"):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files.append(relative)
    return sorted(files)


def static_state(files: Sequence[PurePosixPath]) -> CatalogState:
    """Counts from the layout StaticCatalogPublisher writes: `<collection>/collection.json`
    and `<collection>/<item>/<item>.json` (ids are folder names)."""
    collections = sum(1 for f in files if len(f.parts) == 2 and f.name == COLLECTION_FILE)
    items = sorted(
        (f.parts[0], f.parts[1])
        for f in files
        if len(f.parts) == 3 and f.name == f"{f.parts[1]}.json"
    )
    return catalog_state(collections, items)
