"""Dataset declarations: the built-in ones load; bad ones fail naming file, field and reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bq_pipelines.datasets.loading import (
    builtin_declaration_files,
    load_declaration_file,
    load_declarations,
    parse_declaration,
)
from bq_pipelines.datasets.overlap import every_file_name, templates_may_overlap
from bq_pipelines.datasets.plans import SourceLocations, plan_partition
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.orchestration.assets import partition_code_version

VALID = {
    "id": "example",
    "title": "Example",
    "description": "An example",
    "license": "CC-BY-4.0",
    "folder": "example",
    "source": {
        "host": "example",
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


def _with(path: str, value) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(VALID))
    node: Any = data
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
        base_urls={"example": "http://127.0.0.1:9/mirror"}, local_root=Path("/data")
    )
    [plan] = plan_partition(declaration, {"date": "1979-03", "variable": "pr"}, locations)
    assert plan.item_id == "pr_1979_03"
    assert plan.sources[0].url == "http://127.0.0.1:9/mirror/monthly/pr/CHELSA_pr_03_1979_V.2.1.tif"
    assert plan.properties == {"variable": "pr", "year": 1979, "version": "2.1"}
    assert plan.datetime is not None and plan.end_datetime is not None
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
        (_with("cog", {"compression": "lzw"}), "example.yaml: cog.compression: Input should be"),
    ],
)
def test_bad_declarations_name_the_field(data, expected):
    with pytest.raises(ConfigError) as error:
        parse_declaration(data, "example.yaml")
    assert expected in str(error.value)


def test_zstd_compression_changes_the_settings_and_the_code_version():
    deflate = parse_declaration(VALID, "example.yaml")
    zstd = parse_declaration(_with("cog", {"compression": "zstd"}), "example.yaml")
    assert deflate.cog.settings().compression == "deflate"
    assert zstd.cog.settings().compression == "zstd"
    assert partition_code_version(zstd) != partition_code_version(deflate)
    # The default hashes as before the choice existed: published assets do not turn stale.
    assert "compression" not in deflate.cog.versioned()


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


# --- refused at load: what would otherwise fail after an upload ----------------------------------


def test_all_shipped_declarations_load_together():
    declarations = load_declarations()
    assert sorted(d.id for d in declarations) == sorted(
        p.parent.name for p in builtin_declaration_files()
    )
    assert len(declarations) == 24
    # Each writes under a folder of its own, but CHELSA's climatologies and projections, which
    # share the legacy folder and never a file name: nothing overwrites another's objects.
    by_folder: dict[str, list[Declaration]] = {}
    for declaration in declarations:
        by_folder.setdefault(declaration.folder, []).append(declaration)
    shared = {f: sorted(d.id for d in ds) for f, ds in by_folder.items() if len(ds) > 1}
    assert shared == {"CHELSA/climatologies": ["chelsa-clim", "chelsa-clim-proj"]}
    clim, proj = by_folder["CHELSA/climatologies"]
    clim_names, proj_names = every_file_name(clim), every_file_name(proj)
    assert clim_names and proj_names
    assert clim_names.isdisjoint(proj_names)


def _static(*dimensions: tuple[str, list[Any]]) -> dict[str, Any]:
    return {"static": [{"name": name, "values": values} for name, values in dimensions]}


def _local(
    partitions: dict[str, Any], item: dict[str, Any], local: str = "x/{layer}.tif", **more
) -> dict[str, Any]:
    """A declaration reading local files, with `partitions` and `item` given."""
    data = {k: v for k, v in VALID.items() if k not in ("source", "partitions", "item")}
    return {
        **data,
        "source": {"local": local},
        "partitions": partitions,
        "item": {"datetime": "2020-01-01T00:00:00Z", **item},
        **more,
    }


LAYERS = _static(("layer", ["a", "b"]))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # A constant id, or one that leaves out a dimension: partitions share ids and objects.
        (
            _with("item.id", "constant"),
            "item.id: does not vary with the partition variable {variable}",
        ),
        (
            _with("item.id", "{year}_{month:02d}"),
            "item.id: does not vary with the partition variable {variable}",
        ),
        (
            _with("item.id", "{variable}_{year}"),
            "item.id: does not vary with the time partition {date} (monthly): use it, {date}, "
            "or {year} and {month}",
        ),
        (
            {
                **_with("item.id", "{variable}_{date}"),
                "item": {"id": "{variable}_{date}", "file_name": "{variable}.tif"},
            },
            "item.file_name: does not vary with the time partition {date}",
        ),
        # vars count for their dimension only when they tell every value apart.
        (
            _local(
                _static(
                    (
                        "layer",
                        [{"value": "a", "vars": {"v": "x"}}, {"value": "b", "vars": {"v": "x"}}],
                    )
                ),
                {"id": "l_{v}"},
            ),
            "item.id: does not vary with the partition variable {layer}",
        ),
        (
            _local(LAYERS, {"id": "{layer}", "expand": {"variable": "k", "count": 3}}),
            "item.id: does not vary with {k} (item.expand.variable)",
        ),
        (
            _local({"files": {"glob": "x/*.tif"}}, {"id": "layer"}, local="x/{file_name}"),
            "item.id: does not vary with the file of the partition",
        ),
        # Rendered alike although every variable is used.
        (
            _local(
                _static(("a", ["1", "11"]), ("b", ["1", "11"])),
                {"id": "x{a}{b}"},
                local="x/{a}/{b}.tif",
            ),
            "item.id: partitions a=1, b=11 and a=11, b=1 both give 'x111'",
        ),
    ],
)
def test_ids_and_keys_must_vary_with_every_partition_variable(data, expected):
    with pytest.raises(ConfigError) as error:
        parse_declaration(data, "example.yaml")
    assert f"example.yaml: {expected}" in str(error.value)


def test_what_tells_partitions_apart_is_accepted():
    # Vars unique together (soilgrids), a single-valued dimension (ghmts), {date} for time.
    soil = _static(
        (
            "layer",
            [
                {"value": "bdod_0-5", "vars": {"variable": "bdod", "depth": "0-5"}},
                {"value": "bdod_5-15", "vars": {"variable": "bdod", "depth": "5-15"}},
                {"value": "cec_0-5", "vars": {"variable": "cec", "depth": "0-5"}},
            ],
        )
    )
    parse_declaration(
        _local(soil, {"id": "{layer}", "file_name": "{variable}_{depth}.tif"}), "s.yaml"
    )
    parse_declaration(_local(_static(("layer", ["only"])), {"id": "fixed"}), "g.yaml")
    parse_declaration(_with("item.id", "{variable}_{date}"), "example.yaml")
    expanded = {"id": "{layer}_{k:04d}", "expand": {"variable": "k", "count": 5090}}
    parse_declaration(_local(LAYERS, expanded), "m.yaml")


@pytest.mark.parametrize(
    ("item_id", "values", "expected"),
    [
        ("{layer}/x", ["a", "b"], "item.id: 'a/x': '/' is not allowed in an id"),
        ("{layer}?x", ["a", "b"], "'?' is not allowed in an id"),
        ("{layer}#x", ["a", "b"], "'#' is not allowed in an id"),
        ("{layer}%20", ["a", "b"], "'%' is not allowed in an id"),
        ("l_{layer}", ["a", "b c"], "item.id: 'l_b c': ' ' is not allowed in an id (only "),
        ("l_{layer}", ["a", "b\tc"], "'\\t' is not allowed in an id"),
        ("l..{layer}", ["a", "b"], "item.id: 'l..a': must not contain '..'"),
        (".{layer}", ["a", "b"], "item.id: '.a': must start with a letter, a digit or '_'"),
        ("-{layer}", ["a", "b"], "item.id: '-a': must start with a letter, a digit or '_'"),
        ("x" * 200 + "{layer}", ["a", "b"], "longer than 200 characters (201)"),
    ],
)
def test_ids_the_catalog_would_refuse_are_refused_at_load(item_id, values, expected):
    data = _local(_static(("layer", values)), {"id": item_id}, local="x/l.tif")
    with pytest.raises(ConfigError) as error:
        parse_declaration(data, "example.yaml")
    assert expected in str(error.value)
    assert str(error.value).startswith("example.yaml: item.id: ")


def test_an_empty_id_from_a_var_is_refused_naming_the_partition():
    values = [{"value": "a", "vars": {"n": ""}}, {"value": "b", "vars": {"n": "b"}}]
    data = _local(_static(("layer", values)), {"id": "{n}"}, local="x/l.tif")
    with pytest.raises(ConfigError, match=r"item\.id: '': must not be empty \(partition layer=a\)"):
        parse_declaration(data, "example.yaml")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"source": {"local": "../../../../{layer}"}},
            "source.local: '../../../../a': must not contain a '..' segment",
        ),
        ({"source": {"local": "/etc/{layer}"}}, "source.local: '/etc/a': must be relative"),
        (
            {"source": {"local": "x\\{layer}.tif"}},
            "source.local: 'x\\\\a.tif': must not contain a backslash",
        ),
        (
            {"source": {"local": "x/{layer}\x00.tif"}},
            "source.local: 'x/a\\x00.tif': must not contain control characters",
        ),
        (
            {"source": {"url": "https://h.org/d/../{layer}.tif"}},
            "source.url: 'https://h.org/d/../a.tif': must not contain a '..' segment",
        ),
        (
            {"source": {"url": "https://h.org/d/%2e%2e/{layer}.tif"}},
            "source.url: 'https://h.org/d/%2e%2e/a.tif': must not contain a '..' segment",
        ),
        (
            {"source": {"url": "https://u:pw@h.org/{layer}.tif"}},
            "source.url: 'https://u:pw@h.org/a.tif': must not carry credentials",
        ),
        (
            {"source": {"host": "h", "base_url": "https://u:pw@h.org", "path": "{layer}"}},
            "source: base_url: must not carry credentials",
        ),
        (
            {"source": {"host": "h", "base_url": "https://h.org", "path": "a/../../{layer}"}},
            "source.path: 'a/../../a': must not contain a '..' segment",
        ),
        (
            {"source": {"local": "x.nc", "subdataset": "../{layer}"}},
            "source.subdataset: '../a': must not contain a '..' segment",
        ),
        ({"folder": "../other"}, "folder: '../other': must not contain a '..' segment"),
        ({"folder": "/abs"}, "folder: '/abs': must be relative"),
        ({"folder": "a//b"}, "folder: 'a//b': must not contain empty or '.' segments"),
        (
            {"item": {"id": "{layer}", "file_name": "sub/{layer}.tif", "datetime": "2020-01-01"}},
            "item.file_name: file name 'sub/a.tif': must be a plain file name",
        ),
        (
            {
                "partitions": {"files": {"glob": "../*.tif"}},
                "source": {"local": "{file_name}"},
                "item": {"id": "{file}", "datetime": "2020-01-01"},
            },
            "partitions.files.glob: '../*.tif': must not contain a '..' segment",
        ),
        (
            {
                "partitions": {
                    "files": {"glob": "*.tif", "metadata": {"csv": "/etc/x.csv", "columns": ["a"]}}
                },
                "source": {"local": "{file_name}"},
                "item": {"id": "{file}", "datetime": "2020-01-01"},
            },
            "partitions.files.metadata.csv: '/etc/x.csv': must be relative",
        ),
    ],
)
def test_paths_that_could_leave_their_root_are_refused_at_load(change, expected):
    data = {**_local(LAYERS, {"id": "{layer}"}), **change}
    with pytest.raises(ConfigError) as error:
        parse_declaration(data, "example.yaml")
    assert f"example.yaml: {expected}" in str(error.value)


def test_a_dimension_value_used_in_a_path_is_checked_like_the_template():
    data = _local(_static(("layer", ["a", "../../etc/passwd"])), {"id": "l_{n}"}, local="x/{layer}")
    data["partitions"]["static"][0]["values"] = [
        {"value": "a", "vars": {"n": 1}},
        {"value": "../../etc/passwd", "vars": {"n": 2}},
    ]
    with pytest.raises(ConfigError) as error:
        parse_declaration(data, "example.yaml")
    assert "source.local: 'x/../../etc/passwd': must not contain a '..' segment" in str(error.value)
    assert "(partition layer=../../etc/passwd)" in str(error.value)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"datetime": "not-a-date"}, "item.datetime: 'not-a-date' is not an ISO date/time"),
        (
            {"datetime": "{layer}-01-01"},
            "item.datetime: 'a-01-01' is not an ISO date/time",
        ),
        (
            {"start_datetime": "2020-01-01T00:00:00Z", "end_datetime": "2019-12-31T00:00:00Z"},
            "item.start_datetime: 2020-01-01T00:00:00+00:00 is after item.end_datetime "
            "2019-12-31T00:00:00+00:00",
        ),
        (
            {"start_datetime": "2020-01-01T00:00:00Z", "datetime": "2020-01-01T00:00:00Z"},
            "item.start_datetime: set it with item.end_datetime",
        ),
    ],
)
def test_dates_are_rendered_and_parsed_at_load(item, expected):
    data = _local(LAYERS, {"id": "{layer}", **item})
    if "datetime" not in item:
        data["item"].pop("datetime")
    with pytest.raises(ConfigError) as error:
        parse_declaration(data, "example.yaml")
    assert f"example.yaml: {expected}" in str(error.value)


def test_a_time_partition_dates_its_items_and_each_period_is_checked():
    data = _with("item.end_datetime", "{year}-01-01T00:00:00Z")
    data["item"]["start_datetime"] = "{year}-{month:02d}-01T00:00:00Z"
    # February's start (1979-02-01) is after its end (1979-01-01): refused with its partition.
    with pytest.raises(
        ConfigError, match=r"is after item\.end_datetime .*\(partition date=1979-02"
    ):
        parse_declaration(data, "example.yaml")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"item.expand.count": 1_000_000},
            "item.expand.count: Input should be less than or equal to 100000",
        ),
        (
            {"item.expand.stride": 0},
            "item.expand.stride: Input should be greater than or equal to 1",
        ),
        ({"item.expand.first_band": "0"}, "item.expand.first_band: 0 is not a band number"),
        ({"source.bands": [0]}, "source.bands.0: Input should be greater than or equal to 1"),
    ],
)
def test_numbers_beyond_reason_are_refused(change, expected):
    data = _local(LAYERS, {"id": "{layer}_{k}", "expand": {"variable": "k", "count": 2}})
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = data
        for name in parents:
            node = node[name]
        node[last] = value
    with pytest.raises(ConfigError) as error:
        parse_declaration(data, "example.yaml")
    assert f"example.yaml: {expected}" in str(error.value)


def test_too_many_static_partitions_are_refused():
    many = [str(i) for i in range(50)]
    data = _local(
        _static(("a", many), ("b", many), ("c", many)), {"id": "{a}_{b}_{c}"}, local="x/{a}"
    )
    with pytest.raises(
        ConfigError, match=r"partitions\.static: 125000 combinations, more than 100000"
    ):
        parse_declaration(data, "example.yaml")


# --- files partitions: checked at plan time, when the files are known --------------------------


def _files_declaration(**item) -> dict[str, Any]:
    return _local(
        {"files": {"glob": "f/*.tif", "metadata": {"csv": "f/list.csv", "columns": ["id"]}}},
        {"id": "{id}", **item},
        local="f/{file_name}",
    )


def test_files_partitions_check_rendered_ids_at_plan_time(tmp_path):
    declaration = parse_declaration(
        _local({"files": {"glob": "f/*.tif"}}, {"id": "{file}"}, local="f/{file_name}"),
        "example.yaml",
    )
    locations = SourceLocations({}, tmp_path)
    [plan] = plan_partition(declaration, {"file": "slope.tif"}, locations)
    assert plan.item_id == "slope" and plan.file_name == "slope.tif"
    with pytest.raises(ConfigError, match=r"item\.id: 'my layer': ' ' is not allowed in an id"):
        plan_partition(declaration, {"file": "my layer.tif"}, locations)


def test_files_partitions_refuse_a_csv_giving_two_files_one_id(tmp_path):
    declaration = parse_declaration(_files_declaration(), "example.yaml")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "list.csv").write_text(
        "filename,id\na.tif,roads\nb.tif,roads\nc.tif,rivers\n"
    )
    locations = SourceLocations({}, tmp_path)
    [plan] = plan_partition(declaration, {"file": "c.tif"}, locations)
    assert plan.item_id == "rivers"
    with pytest.raises(
        ConfigError,
        match=r"the rows of 'a\.tif' and 'b\.tif' have the same id \(roads\), which item\.id uses",
    ):
        plan_partition(declaration, {"file": "a.tif"}, locations)


def test_files_partitions_check_their_templates_at_load():
    data = _local({"files": {"glob": "f/*.tif"}}, {"id": "my {file}"}, local="f/{file_name}")
    with pytest.raises(
        ConfigError,
        match=r"item\.id: 'my x': ' ' is not allowed in an id \(only .*\(partition file=<any>\)",
    ):
        parse_declaration(data, "example.yaml")


# --- two datasets, one folder --------------------------------------------------------------------


def _write(tmp_path: Path, name: str, data: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**data, "id": name}))
    return path


def test_two_datasets_that_can_write_the_same_key_are_refused(tmp_path):
    # Files partitions: their file names are only known later, so the templates must differ.
    files = {"files": {"glob": "x/*.tif"}}
    first = _write(
        tmp_path, "first", _local(files, {"id": "{file}"}, "x/{file_name}", folder="shared")
    )
    second = _write(tmp_path, "second", _local(LAYERS, {"id": "x_{layer}"}, folder="shared/"))
    with pytest.raises(ConfigError) as error:
        load_declarations([first, second])
    assert str(error.value).startswith(
        "second.yaml: folder: 'shared' is also the folder of first.yaml, and their file names "
        "may be the same ('x_{layer}.tif' and '{file}.tif')"
    )


def test_two_declared_datasets_whose_file_names_meet_are_refused(tmp_path):
    first = _write(
        tmp_path,
        "first",
        _local(_static(("layer", ["x_a", "c"])), {"id": "{layer}"}, folder="shared"),
    )
    second = _write(tmp_path, "second", _local(LAYERS, {"id": "x_{layer}"}, folder="shared"))
    with pytest.raises(ConfigError) as error:
        load_declarations([first, second])
    assert str(error.value).startswith(
        "second.yaml: folder: 'shared' is also the folder of first.yaml, and their file names "
        "meet ('x_a.tif')"
    )


def test_two_declared_datasets_share_a_folder_when_their_file_names_never_meet(tmp_path):
    # Every partition declared: the names are rendered, not guessed from the templates (which
    # could meet: `{layer}.tif` and `x_{layer}.tif`).
    first = _write(tmp_path, "first", _local(LAYERS, {"id": "{layer}"}, folder="shared"))
    second = _write(tmp_path, "second", _local(LAYERS, {"id": "x_{layer}"}, folder="shared"))
    assert [d.id for d in load_declarations([first, second])] == ["first", "second"]


def test_datasets_may_share_a_folder_when_their_file_names_cannot_meet(tmp_path):
    paths = [
        _write(
            tmp_path,
            name,
            _local(
                LAYERS, {"id": "{layer}", "file_name": f"gfc_{name}_{{layer}}.tif"}, folder="gfw"
            ),
        )
        for name in ("gain", "lossyear")
    ]
    assert [d.id for d in load_declarations(paths)] == ["gain", "lossyear"]


@pytest.mark.parametrize(
    ("first", "second", "overlap"),
    [
        ("{a}.tif", "{b}.tif", True),
        ("gain_{t}.tif", "lossyear_{t}.tif", False),
        ("gain_{t}.tif", "gain_{t}_v2.tif", True),  # same beginning, '.tif' ends both
        ("{t}.tif", "{t}.nc", False),
        ("x_{t}.tif", "x_{t}.tif.tif", True),
        ("fixed.tif", "fixed.tif", True),
        ("fixed.tif", "other.tif", False),
        ("fixed.tif", "f{x}.tif", True),
        ("fixed.tif", "g{x}.tif", False),
        ("ab.tif", "ab{x}b.tif", False),  # too short to hold both ends
    ],
)
def test_file_name_templates_overlap_unless_provably_distinct(first, second, overlap):
    assert templates_may_overlap(first, second) is overlap
    assert templates_may_overlap(second, first) is overlap


def test_expanded_items_are_dated_with_their_index():
    item: dict[str, Any] = {"id": "{layer}_{k}", "expand": {"variable": "k", "count": 28}}
    item["datetime"] = "2020-02-{k:02d}T00:00:00Z"
    parse_declaration(_local(LAYERS, item), "example.yaml")  # 1..28 February
    item["expand"]["count"] = 30
    with pytest.raises(ConfigError, match=r"item\.datetime: '2020-02-30T00:00:00Z' is not an ISO"):
        parse_declaration(_local(LAYERS, item), "example.yaml")
