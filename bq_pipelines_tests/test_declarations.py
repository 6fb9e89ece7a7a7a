"""Dataset declarations: the built-in ones load; bad ones fail naming file, field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bq_pipelines.declarations import (
    builtin_declaration_files,
    load_declaration_file,
    load_declarations,
    parse_declaration,
)
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.plans import SourceLocations, plan_partition

VALID = {
    "id": "example",
    "title": "Example",
    "description": "An example",
    "license": "CC-BY-4.0",
    "folder": "example",
    "source": {
        "host": "chelsa",
        "base_url": "https://example.org/data",
        "path": "monthly/{variable}/CHELSA_{variable}_{month:02d}_{year}_V.2.1.tif",
    },
    "partitions": {
        "time": {"cadence": "monthly", "start": "1979-01", "end": "1980-12"},
        "static": [{"name": "variable", "values": ["tas", "pr"]}],
    },
    "item": {
        "id": "{variable}_{year}_{month:02d}",
        "properties": {"variable": "{variable}", "year": "{year}", "version": "2.1"},
    },
}


def _with(path: str, value) -> dict:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[parts[-1]] = value
    return data


def test_builtin_declarations_load():
    declarations = load_declarations()
    assert "demo" in {d.id for d in declarations}
    assert len(declarations) == len(builtin_declaration_files())


def test_valid_declaration_plans_a_partition():
    declaration = parse_declaration(VALID, "example.yaml")
    locations = SourceLocations(
        base_urls={"chelsa": "http://127.0.0.1:9/mirror"}, local_root=Path("/data")
    )
    [plan] = plan_partition(declaration, {"date": "1979-03", "variable": "pr"}, locations)
    assert plan.item_id == "pr_1979_03"
    assert plan.sources[0].url == "http://127.0.0.1:9/mirror/monthly/pr/CHELSA_pr_03_1979_V.2.1.tif"
    assert plan.properties == {"variable": "pr", "year": 1979, "version": "2.1"}
    assert plan.datetime.isoformat() == "1979-03-01T00:00:00+00:00"
    assert plan.end_datetime.isoformat() == "1979-03-31T23:59:59+00:00"


def test_source_host_default_when_not_overridden():
    declaration = parse_declaration(VALID, "example.yaml")
    [plan] = plan_partition(
        declaration,
        {"date": "1980-12", "variable": "tas"},
        SourceLocations(base_urls={}, local_root=Path("/data")),
    )
    assert plan.sources[0].url.startswith("https://example.org/data/monthly/tas/")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (_with("colour", "red"), "example.yaml: colour: unknown key"),
        (_with("item.id", "{variable}_{decade}"), "item.id: unknown template variable {decade}"),
        (_with("source.path", "{variable"), "source.path: bad template"),
        (
            _with("partitions.static", [{"name": "variable", "values": []}]),
            "partitions.static.0.values: List should have at least 1 item",
        ),
        (_with("partitions.time.end", "1970-01"), "end 1970-01-01 is before start 1979-01-01"),
        (_with("partitions.time.cadence", "weekly"), "partitions.time.cadence"),
        (_with("id", "Bad Id"), "example.yaml: id: String should match pattern"),
        (_with("license", None), "example.yaml: license: Input should be a valid string"),
    ],
)
def test_bad_declarations_name_the_field(data, expected):
    with pytest.raises(ConfigError) as error:
        parse_declaration(data, "example.yaml")
    assert expected in str(error.value)


def test_file_name_must_match_id(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(VALID))
    with pytest.raises(ConfigError, match=r"other\.yaml: id: 'example' must match the file name"):
        load_declaration_file(path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("id: [unclosed")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_declaration_file(path)


def test_duplicate_ids_are_refused(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "example.yaml").write_text(yaml.safe_dump(VALID))
    with pytest.raises(ConfigError, match="declared twice"):
        load_declarations([tmp_path / "a" / "example.yaml", tmp_path / "b" / "example.yaml"])


def test_dimension_values_may_be_numbers_and_year_is_free_without_time():
    data = _with(
        "partitions",
        {
            "static": [
                {"name": "year", "values": [2015, {"value": 2020, "vars": {"label": "late"}}]}
            ]
        },
    )
    data["item"] = {"id": "x_{year}", "datetime": "{year}-01-01T00:00:00Z"}
    data["source"] = {"local": "x/{year}.tif"}
    declaration = parse_declaration(data, "example.yaml")
    assert declaration.partitions.static_keys() == ["2015", "2020"]


def test_vars_may_not_hide_a_dimension():
    data = _with(
        "partitions.static",
        [{"name": "variable", "values": [{"value": "tas", "vars": {"variable": "pr"}}]}],
    )
    with pytest.raises(ConfigError, match=r"variable=tas: vars \['variable'\] would hide"):
        parse_declaration(data, "example.yaml")
