"""The StacDataset component and the shared declarations: hosts and grids declared once,
dataset files checked with their lines, presentation (owners, tags, kinds, versions) and the
newest-partition schedule of a growing series."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from bq_pipelines.components.check import check_file
from bq_pipelines.datasets.loading import (
    builtin_declaration_data,
    builtin_declaration_path,
    load_declaration_file,
    load_declarations,
    parse_declaration,
)
from bq_pipelines.datasets.schema import shared_grids, shared_hosts
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.orchestration.assets import partition_code_version
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.resources import resources_for
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.values import run_requests


def _with_resources(definitions: dg.Definitions) -> dg.Definitions:
    return dg.Definitions.merge(definitions, dg.Definitions(resources=resources_for(Settings())))


def _component_file(folder: Path, attributes: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "defs.yaml"
    document = {"type": "bq_pipelines.components.StacDataset", "attributes": attributes}
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def test_every_dataset_is_a_component_file_named_after_its_folder():
    for declaration in load_declarations():
        path = builtin_declaration_path(declaration.id)
        assert path.parent.name == declaration.id
        assert yaml.safe_load(path.read_text())["type"] == "bq_pipelines.components.StacDataset"


def test_a_shared_host_brings_its_base_url_and_may_not_be_redeclared():
    data = builtin_declaration_data("chelsa-monthly")
    assert "base_url" not in data["source"]
    declaration = parse_declaration(data, "chelsa-monthly/defs.yaml")
    assert declaration.source.base_url == shared_hosts()["chelsa"]
    other = {**data, "source": {**data["source"], "base_url": "https://elsewhere.example"}}
    with pytest.raises(ConfigError, match=r"base_url: host 'chelsa' is declared in .*hosts\.yaml"):
        parse_declaration(other, "chelsa-monthly/defs.yaml")


def test_the_gfw_datasets_share_one_tile_grid():
    grid = shared_grids()["gfw-10deg"]
    assert len(grid) == 504 and len(set(grid)) == 504
    for dataset in ("gfw-gain", "gfw-lossyear", "gfw-treecover2000"):
        data = builtin_declaration_data(dataset)
        assert data["partitions"]["static"][0] == {"name": "tile", "grid": "gfw-10deg"}
        declaration = parse_declaration(data, dataset)
        assert declaration.partitions.static_keys() == grid
    data = builtin_declaration_data("gfw-gain")
    data["partitions"]["static"][0]["grid"] = "gfw-5deg"
    with pytest.raises(ConfigError, match="grid: 'gfw-5deg' is not declared"):
        parse_declaration(data, "gfw-gain")


def test_a_component_file_must_sit_in_the_folder_of_its_id(tmp_path):
    path = _component_file(tmp_path / "other", builtin_declaration_data("demo"))
    with pytest.raises(ConfigError, match=r"other/defs\.yaml: id: 'demo' must match the folder"):
        load_declaration_file(path)


def test_the_check_names_the_line_of_a_typo_and_of_a_refusal(tmp_path):
    data = builtin_declaration_data("demo")
    data["tittle"] = data.pop("title")
    path = _component_file(tmp_path / "demo", data)
    problems = check_file(path)
    lines = path.read_text().splitlines()
    [typo] = [p for p in problems if "tittle" in p]
    line = int(typo.split(":")[1])
    assert lines[line - 1].strip().startswith("tittle:")
    assert typo.endswith("tittle: unknown key")

    data = builtin_declaration_data("demo")
    data["item"]["id"] = "demo_{layr}"
    path = _component_file(tmp_path / "demo", data)
    [problem] = check_file(path)
    line = int(problem.split(":")[1])
    assert "unknown template variable {layr}" in problem
    assert path.read_text().splitlines()[line - 1].strip().startswith("id: demo_{layr}")


def test_every_asset_has_owners_tags_kinds_and_a_code_version():
    declaration = parse_declaration(builtin_declaration_data("esacci-lc"), "esacci-lc")
    on_services = Settings(object_store="s3", s3_bucket="bq-io", catalog="stac-api")
    graph = _with_resources(build_dataset(declaration, on_services)).resolve_asset_graph()
    kinds = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:biodiversite-quebec"]
        assert node.tags == {
            "dataset": "esacci-lc",
            "host": "esa-cci.local",
            "license": "other",
            "cadence": "yearly",
            **{k: v for k, v in node.tags.items() if k.startswith("dagster/kind/")},
        }
        assert node.code_version
        assert declaration.description in (node.description or "")
        kinds[key.path[1]] = node.kinds
    assert kinds == {
        "raw": {"file"},
        "cog": {"cog"},
        "object": {"cog", "s3"},
        "stac_item": {"stac", "postgres"},
        "collection": {"stac", "postgres"},
    }


def test_the_code_version_follows_the_cog_settings():
    data = builtin_declaration_data("demo")
    before = partition_code_version(parse_declaration(data, "demo"))
    data["partitions"]["static"][0]["values"][1]["cog"] = {"nodata": -9999}
    after = partition_code_version(parse_declaration(data, "demo"))
    assert before != after and before.startswith("pipeline-")


def test_a_growing_series_gets_a_stopped_schedule_of_its_newest_partition():
    data = builtin_declaration_data("chelsa-monthly")
    data["id"] = data["folder"] = "chelsa-growing"
    del data["partitions"]["time"]["end"]
    del data["temporal_extent"]  # a growing series takes its extent from its items
    definitions = _with_resources(build_dataset(parse_declaration(data, "chelsa-growing")))
    assert definitions.schedules is not None
    [schedule] = definitions.schedules
    resolved = definitions.resolve_schedule_def(schedule.name)
    assert resolved.name == "chelsa_growing_schedule"
    assert resolved.default_status == dg.DefaultScheduleStatus.STOPPED
    assert resolved.cron_schedule == "0 0 1 * *"  # the series' cadence
    # Each tick requests the newest month, one run per variable.
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 2, 6, tzinfo=UTC),
        repository_def=definitions.get_repository_def(),
    )
    requests = run_requests(resolved.evaluate_tick(context))
    assert len(requests) == 10
    assert {str(r.partition_key).split("|")[0] for r in requests} == {"2026-10"}

    data["schedule"] = "0 6 3 * *"
    definitions = _with_resources(build_dataset(parse_declaration(data, "chelsa-growing")))
    assert definitions.schedules is not None
    [schedule] = definitions.schedules
    assert definitions.resolve_schedule_def(schedule.name).cron_schedule == "0 6 3 * *"

    # A finished series has no schedule unless it declares one; a static dataset cannot.
    assert not build_dataset(load_declaration_file(builtin_declaration_path("demo"))).schedules
    static = builtin_declaration_data("demo") | {"schedule": "0 6 * * *"}
    with pytest.raises(ConfigError, match="schedule: only a time-partitioned dataset"):
        parse_declaration(static, "demo")
