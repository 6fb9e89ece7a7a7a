"""A static catalog's backup archive is extracted with tarfile's "data" filter: a member that
reaches outside the copy's folder is refused, and nothing is written beside it. The filter needs
Python 3.11.4 (PEP 706), which pyproject.toml requires."""

from __future__ import annotations

import io
import tarfile
import tomllib
from pathlib import Path

import pytest

from bq_pipelines.backup.static import StaticCatalog
from bq_pipelines.lib.errors import BackupError
from bq_pipelines_testkit.services import PROJECT_ROOT


def archive_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_member_outside_the_copy_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    archive = archive_with(
        tmp_path / "backup.tar.gz",
        {"catalog.json": b"{}", "../escaped.json": b"{}"},
    )
    backend = StaticCatalog(tmp_path / "catalog", tmp_path / "work")
    copy = tmp_path / "restored"
    with pytest.raises(BackupError, match="outside the destination"):
        backend.restore_copy(archive, str(copy))
    assert not (tmp_path / "escaped.json").exists()
    assert not copy.exists()  # the partial copy is removed


def test_the_python_the_project_requires_extracts_with_filters() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"].startswith(">=3.11.4")
    assert hasattr(tarfile, "data_filter")
