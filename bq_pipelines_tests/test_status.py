"""`bq-pipelines status` and the collection's status metadata: partitions published, missing,
failed, stale (code version, settings, sources) and adopted, read from the run history."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from bq_pipelines.cli import main
from bq_pipelines.datasets.loading import parse_declaration
from bq_pipelines.datasets.plans import SourceLocations
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.orchestration.assets import partition_code_version
from bq_pipelines.orchestration.keys import DatasetKeys, partitions_definition
from bq_pipelines.orchestration.status import DatasetStatus, dataset_status
from bq_pipelines_testkit.runs import materialize_dataset
from bq_pipelines_tests.fixtures.demo import demo_data, demo_declaration


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("BQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # then removed: the CLI's default home
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.setenv("BQ_HOME", str(tmp_path / "bq"))
    return tmp_path / "bq"


def status_lines(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    capsys.readouterr()  # what earlier commands printed
    assert main(["status", *args]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_status_counts_missing_published_and_failed_partitions(cli_home: Path, capsys) -> None:
    assert main(["demo-data"]) == 0
    assert status_lines(capsys, "demo") == [
        "demo: 3 partitions: 0 published, 3 missing, 0 failed, 0 stale, 0 adopted",
        "  missing: landcover, elevation, temperature",
    ]
    assert main(["materialize", "demo", "--partition", "landcover"]) == 0
    (cli_home / "sources" / "demo" / "temperature.tif").write_bytes(b"no raster")
    assert main(["materialize", "demo", "--partition", "temperature"]) == 1
    capsys.readouterr()
    assert status_lines(capsys, "demo") == [
        "demo: 3 partitions: 1 published, 1 missing, 1 failed, 0 stale, 0 adopted",
        "  missing: elevation",
        "  failed: temperature",
    ]


@pytest.mark.slow
def test_a_changed_source_is_stale_when_the_sources_are_checked(cli_home: Path, capsys) -> None:
    assert main(["demo-data"]) == 0
    assert main(["materialize", "demo", "--partition", "elevation"]) == 0
    capsys.readouterr()
    assert "0 stale" in status_lines(capsys, "demo", "--check-sources")[0]
    source = cli_home / "sources" / "demo" / "elevation.tif"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    lines = status_lines(capsys, "demo", "--check-sources")
    assert "1 stale" in lines[0]
    assert "  stale: elevation (sources changed)" in lines
    assert "0 stale" in status_lines(capsys, "demo")[0]  # unchecked, the sources are not read


def test_changed_settings_and_code_versions_are_stale(local_settings, unique_id) -> None:
    declaration = demo_declaration(f"demo-{unique_id}")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(declaration, local_settings, instance).ok
    partitions_def = partitions_definition(declaration.id, declaration.partitions)
    locations = SourceLocations({}, local_settings.local_data_root)

    def status_of(changed: Declaration) -> DatasetStatus:
        return dataset_status(
            changed, partitions_def, instance, locations, partition_code_version(changed)
        )

    assert status_of(declaration).counts() == {
        "partitions": 3,
        "published": 3,
        "missing": 0,
        "failed": 0,
        "stale": 0,
        "adopted": 0,
    }
    # An item property changed in the YAML: the published items are not what it would publish.
    data = {**demo_data(), "id": declaration.id, "folder": declaration.folder}
    data["item"] = {**data["item"], "properties": {"layer": "{layer}", "edition": 2}}
    renamed = status_of(parse_declaration(data, "demo.yaml"))
    assert renamed.counts()["stale"] == 3
    assert set(renamed.stale_reasons.values()) == {"settings changed"}
    # A COG setting changed: the code version says it first.
    data = {**demo_data(), "id": declaration.id, "folder": declaration.folder}
    data["cog"] = {**data.get("cog", {}), "compression": "zstd"}
    recoded = status_of(parse_declaration(data, "demo.yaml"))
    assert set(recoded.stale_reasons.values()) == {"code version changed"}

    # The collection shows the counts at a glance.
    metadata = latest_metadata_of_collection(instance, declaration.id)
    assert metadata["partitions_published"] == 3 and metadata["partitions_missing"] == 0
    assert metadata["partition_status"].startswith(f"{declaration.id}: 3 partitions: 3 published")


def latest_metadata_of_collection(instance: dg.DagsterInstance, dataset_id: str) -> dict[str, Any]:
    event = instance.get_latest_materialization_event(DatasetKeys(dataset_id).collection)
    assert event is not None and event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}
