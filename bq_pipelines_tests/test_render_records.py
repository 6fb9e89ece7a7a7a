"""A declaration with many partitions is rendered once per version of the code, not at every
load of every process; a template error is never hidden by a record."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bq_pipelines.datasets import render_records, validation
from bq_pipelines.datasets.loading import builtin_declaration_data, parse_declaration
from bq_pipelines.lib.errors import ConfigError

MANY = "chelsa-monthly"  # 4,920 partitions
FEW = "soilgrids"  # 79


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache folder; each validation below starts as in a new process."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    validation._RENDERED_OK.clear()
    yield render_records.records_dir()
    validation._RENDERED_OK.clear()


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the declarations whose partitions were rendered."""
    rendered: list[str] = []
    check = validation.check_rendered_partitions

    def counted(declaration: Any) -> None:
        rendered.append(declaration.id)
        check(declaration)

    monkeypatch.setattr(validation, "check_rendered_partitions", counted)
    return rendered


def validated_again(dataset_id: str, data: dict[str, Any] | None = None) -> None:
    """Validate as a new process would (nothing remembered in memory)."""
    validation._RENDERED_OK.clear()
    parse_declaration(data or builtin_declaration_data(dataset_id), f"{dataset_id}/defs.yaml")


def test_many_partitions_are_rendered_once_then_recorded(records: Path, renders: list[str]):
    validated_again(MANY)
    validated_again(MANY)
    validated_again(MANY)
    assert renders == [MANY]
    assert len(list(records.iterdir())) == 1


def test_few_partitions_are_rendered_at_each_load_without_a_record(
    records: Path, renders: list[str]
):
    validated_again(FEW)
    validated_again(FEW)
    assert renders == [FEW, FEW]
    assert not records.exists()


def test_a_changed_declaration_is_rendered_again(records: Path, renders: list[str]):
    validated_again(MANY)
    changed = builtin_declaration_data(MANY)
    changed["item"]["properties"]["month"] = "{month:02d}"
    validated_again(MANY, changed)
    assert renders == [MANY, MANY]
    assert len(list(records.iterdir())) == 2


def test_a_declaration_that_fails_is_refused_at_every_load(records: Path, renders: list[str]):
    """Only a render finds it: the partitions after 2010 fall outside the temporal extent."""
    failing = builtin_declaration_data(MANY)
    failing["temporal_extent"] = ["1979-01-01", "2010-12-31"]
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"partition date=2011-01, variable=tas"):
            validated_again(MANY, failing)
    assert renders == [MANY, MANY]
    assert not records.exists() or not list(records.iterdir())


def test_a_record_is_bound_to_the_code_that_checked(
    records: Path, renders: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Another version of the rendering code, or of the facts declarations reference, does not
    trust this one's records."""
    package = tmp_path / "package"
    for folder in ("datasets", "lib", "shared"):
        shutil.copytree(Path(validation.__file__).parents[1] / folder, package / folder)
    monkeypatch.setattr(render_records, "_PACKAGE", package)
    render_records._code_fingerprint.cache_clear()
    try:
        validated_again(MANY)
        validated_again(MANY)
        rendering = package / "datasets" / "rendering.py"
        rendering.write_text(rendering.read_text() + "\n# another version\n")
        render_records._code_fingerprint.cache_clear()
        validated_again(MANY)
        hosts = package / "shared" / "hosts.yaml"
        hosts.write_text(hosts.read_text() + "\n# another version\n")
        render_records._code_fingerprint.cache_clear()
        validated_again(MANY)
        validated_again(MANY)
    finally:
        render_records._code_fingerprint.cache_clear()
    assert renders == [MANY, MANY, MANY]


def test_an_unwritable_cache_only_means_rendering_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renders: list[str]
):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_folder))
    validated_again(MANY)
    validated_again(MANY)
    assert renders == [MANY, MANY]


def test_old_records_are_removed_when_one_is_written(records: Path):
    records.mkdir(parents=True)
    old, recent = records / "old", records / "recent"
    old.touch()
    recent.touch()
    long_ago = time.time() - render_records.RECORD_LIFETIME_S - 60
    os.utime(old, (long_ago, long_ago))
    validated_again(MANY)
    kept = {path.name for path in records.iterdir()}
    assert "old" not in kept and "recent" in kept and len(kept) == 2
