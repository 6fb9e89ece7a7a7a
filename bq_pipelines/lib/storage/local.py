"""The local-folder object store (the default): files under a root, with checksum and owner
sidecars."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from bq_pipelines.lib.errors import StorageError
from bq_pipelines.lib.files import copy_atomically, write_atomically, write_text_atomically
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines.lib.storage.base import (
    COG_MEDIA_TYPE,
    MIB,
    OWNER_SUFFIX,
    SHA256_SUFFIX,
    ByteStream,
    HashingReader,
    ObjectOwner,
    ObjectStore,
    StoredObject,
    check_owner,
    same_content,
    sha256_line,
)
from bq_pipelines.lib.storage.keys import (
    SHA256_RE,
    key_segments,
    url_join,
    validate_key,
    validate_sha256,
)

logger = logging.getLogger(__name__)


class LocalObjectStore(ObjectStore):
    """Files under `root/<key>`, each with a `<file>.sha256` sidecar in `sha256sum` format and,
    for COGs, a `<file>.owner` sidecar (`<collection>/<item>`, percent-encoded).

    The sidecar makes `stat` cheap and lets `sha256sum -c` verify a copied tree. It is given
    its file's mtime when written, after the file's last change: a file written, truncated,
    touched or chmod-ed since (its mtime differs, or its ctime, which no one can set, is newer
    than the sidecar's) is hashed again, whatever the sidecar says. Content types are not
    stored (a filesystem has none); the file extension carries it.
    """

    def __init__(self, root: Path, base_url: str | None = None) -> None:
        self.root = Path(root).absolute()
        self.base_url = base_url

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + SHA256_SUFFIX)

    @staticmethod
    def _owner_sidecar(path: Path) -> Path:
        return path.with_name(path.name + OWNER_SUFFIX)

    def _recorded_sha256(self, path: Path) -> str | None:
        sidecar = self._sidecar(path)
        try:
            text = sidecar.read_text()
            if not _describes(sidecar.stat(), path.stat()):
                return None
        except FileNotFoundError:
            return None
        recorded = text.split(maxsplit=1)[0] if text.strip() else ""
        return recorded if SHA256_RE.fullmatch(recorded) else None

    def _record_sha256(self, path: Path, sha256: str, hashed: os.stat_result | None = None) -> None:
        """Write the sidecar of `path`, whose content hashes to `sha256` (`hashed`: the file's
        stat taken before it was hashed; a file changed since gets no sidecar)."""
        sidecar = self._sidecar(path)
        written = hashed or path.stat()
        write_text_atomically(sidecar, sha256_line(sha256, path.name), _TEMP_PREFIX)
        # The sidecar describes the file as it stands now: same mtime, and a ctime (set by
        # this utime) no older than the file's.
        os.utime(sidecar, ns=(written.st_atime_ns, written.st_mtime_ns))
        now = path.stat()
        if (now.st_mtime_ns, now.st_ctime_ns) != (written.st_mtime_ns, written.st_ctime_ns):
            sidecar.unlink(missing_ok=True)  # changed while it was hashed: hash it next time

    def _recorded_owner(self, path: Path) -> ObjectOwner | None:
        try:
            return ObjectOwner.decode(self._owner_sidecar(path).read_text())
        except FileNotFoundError:
            return None

    def _write_owner(self, path: Path, owner: ObjectOwner) -> None:
        write_text_atomically(self._owner_sidecar(path), owner.encode() + "\n", _TEMP_PREFIX)

    def put_file(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        owner: ObjectOwner | None = None,
        content_type: str = COG_MEDIA_TYPE,
        rewrite: bool = False,
    ) -> StoredObject:
        validate_sha256(sha256)
        dest = self._path(key)
        existing = self.stat(key)
        check_owner(str(dest), existing, owner)
        try:
            size = path.stat().st_size
            if not rewrite and existing is not None and same_content(existing, size, sha256):
                logger.debug("skip %s: same sha256 already stored", dest)
                if owner is not None and existing.owner is None:
                    self._write_owner(dest, owner)
                return StoredObject(key, self.href(key), size, sha256, False, owner)
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Drop the old checksum first: a crash between the two writes must not leave a
            # sidecar that vouches for content it does not describe.
            self._sidecar(dest).unlink(missing_ok=True)
            copy_atomically(path, dest, _TEMP_PREFIX)
            self._record_sha256(dest, sha256)
            if owner is not None:
                self._write_owner(dest, owner)
        except OSError as exc:
            raise StorageError(f"cannot store {path} as {dest}: {exc.strerror or exc}") from exc
        logger.info("stored %s (%d bytes)", dest, size)
        return StoredObject(key, self.href(key), size, sha256, True, owner, sha256)

    def record_owner(self, key: str, owner: ObjectOwner) -> None:
        path = self._path(key)
        existing = self.stat(key)
        if existing is None:
            raise StorageError(f"cannot record the owner of {path}: no such object")
        check_owner(str(path), existing, owner)
        try:
            self._write_owner(path, owner)
        except OSError as exc:
            raise StorageError(f"cannot record the owner of {path}: {exc.strerror or exc}") from exc

    def put_stream(
        self, stream: ByteStream, key: str, *, content_type: str, private: bool = False
    ) -> StoredObject:
        dest = self._path(key)
        reader = HashingReader(stream)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._sidecar(dest).unlink(missing_ok=True)  # see put_file
            write_atomically(
                dest, lambda handle: shutil.copyfileobj(reader, handle, MIB), _TEMP_PREFIX
            )
            self._record_sha256(dest, reader.sha256)
        except OSError as exc:
            raise StorageError(f"cannot store a stream as {dest}: {exc.strerror or exc}") from exc
        logger.info("stored %s (%d bytes)", dest, reader.size)
        return StoredObject(
            key, self.href(key), reader.size, reader.sha256, True, checksum=reader.sha256
        )

    def download(self, key: str, path: Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise StorageError(f"cannot download {source}: no such object")
        try:
            copy_atomically(source, path)
        except OSError as exc:
            raise StorageError(f"cannot copy {source} to {path}: {exc.strerror or exc}") from exc
        return path

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def stat(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            before = path.stat()
            size = before.st_size
            sha256 = self._recorded_sha256(path)
            if sha256 is None:
                # Changed since its sidecar was written, written by hand, or interrupted before
                # its sidecar: hash it and record it.
                sha256 = sha256_file(path)
                self._record_sha256(path, sha256, before)
            owner = self._recorded_owner(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot stat {path}: {exc.strerror or exc}") from exc
        etag = f"{size}-{before.st_mtime_ns}"
        return StoredObject(key, self.href(key), size, sha256, False, owner, sha256, etag)

    def list_keys(self, prefix: str) -> list[str]:
        # A prefix with `..` would walk outside root.
        key_segments("prefix", prefix, allow_empty=True, allow_slash=True)
        # Walk only the deepest folder the prefix names, then filter as a string prefix.
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not start.is_dir():
            return []
        keys = []
        for path in start.rglob("*"):
            if not path.is_file() or path.name.endswith(_SIDECAR_SUFFIXES) or _is_temp(path):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
            self._sidecar(path).unlink(missing_ok=True)
            self._owner_sidecar(path).unlink(missing_ok=True)
            _remove_empty_parents(path.parent, self.root)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror or exc}") from exc

    def href(self, key: str) -> str:
        if self.base_url:
            return url_join(self.base_url, validate_key(key))
        return str(self._path(key))

    def gdal_path(self, key: str) -> str:
        return str(self._path(key))


_TEMP_PREFIX = ".bq-tmp-"
_SIDECAR_SUFFIXES = (SHA256_SUFFIX, OWNER_SUFFIX)


def _describes(sidecar: os.stat_result, file: os.stat_result) -> bool:
    """Whether a checksum sidecar was written after its file's last change (see
    LocalObjectStore)."""
    return sidecar.st_mtime_ns == file.st_mtime_ns and file.st_ctime_ns <= sidecar.st_ctime_ns


def _is_temp(path: Path) -> bool:
    return path.name.startswith(_TEMP_PREFIX)


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): stop climbing
            return
        folder = folder.parent
