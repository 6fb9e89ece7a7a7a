"""Item properties rendered with the JSON types the legacy catalog published, dates read from a
metadata column, species names read from the cube: the template features the legacy
declarations need, and the errors they give."""

from __future__ import annotations

from pathlib import Path

import pytest

from bq_pipelines.datasets.loading import builtin_declaration_data, parse_declaration
from bq_pipelines.datasets.plans import SourceLocations, entity_names, plan_partition
from bq_pipelines.datasets.templates import TypedTemplate, as_typed, parse_datetime, render_property
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines_tests.fixtures.local_sources import species_names, write_ebv_cube

VARIABLES = {"time": "2015", "year": 1985, "month": 7, "date_cell": "2021-01-01", "name": "x"}


@pytest.mark.parametrize(
    ("declared", "published"),
    [
        (2.1, 2.1),  # a literal number stays one
        ("2.1", "2.1"),  # a literal string stays one
        ({"1": "Forest"}, {"1": "Forest"}),  # a mapping as written
        ("{year}", 1985),  # exactly one variable: its type
        ("{year}-{month}", "1985-7"),
        ("{month:02d}", "07"),
        ({"template": "{time}", "type": "integer"}, 2015),
        ({"template": "{time}", "type": "number"}, 2015.0),
        ({"template": "{time}", "type": "string"}, "2015"),
        ({"template": "{date_cell:.4}", "type": "integer"}, 2021),
        ({"template": "{date_cell}", "type": "date"}, "2021-01-01"),
        ({"template": "{date_cell}", "type": "datetime"}, "2021-01-01T00:00:00Z"),
        ({"template": "TRUE", "type": "boolean"}, True),
    ],
)
def test_a_property_is_published_with_its_type(declared, published):
    value = render_property(as_typed(declared), VARIABLES, "item.properties.p")
    assert value == published and type(value) is type(published)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"template": "{name}", "type": "integer"}, "item.properties.p: 'x' is not an integer"),
        ({"template": "{name}", "type": "date"}, r"properties.p: 'x' is not a date \(YYYY"),
        ({"template": "nan", "type": "number"}, "item.properties.p: 'nan' is not a finite number"),
        ({"template": "{missing}", "type": "string"}, "item.properties.p: cannot render"),
    ],
)
def test_a_property_that_cannot_take_its_type_names_the_field(declared, message):
    with pytest.raises(ConfigError, match=message):
        render_property(as_typed(declared), VARIABLES, "item.properties.p")


def test_a_typed_template_must_name_a_known_type():
    with pytest.raises(ValueError, match="type"):
        as_typed({"template": "{x}", "type": "int64"})
    assert isinstance(as_typed({"template": "{x}", "type": "integer"}), TypedTemplate)
    # Any other mapping is a literal.
    assert as_typed({"template": "{x}"}) == {"template": "{x}"}


def test_a_date_alone_is_a_datetime_at_midnight_utc():
    assert parse_datetime("2021-01-01", "item.datetime").isoformat() == "2021-01-01T00:00:00+00:00"
    with pytest.raises(ConfigError, match=r"item\.datetime: '2021-01-01-01-01T00:00:00Z'"):
        parse_datetime("2021-01-01-01-01T00:00:00Z", "item.datetime")


def test_a_typed_property_is_checked_at_load():
    data = builtin_declaration_data("cec_land_cover_percentage")
    data["item"]["properties"]["class"] = {"template": "{category}", "type": "integer"}
    with pytest.raises(ConfigError, match=r"item\.properties\.class: '.*' is not an integer"):
        parse_declaration(data, "cec_land_cover_percentage/defs.yaml")


# --- names of a cube's entities --------------------------------------------------------------


def mammals(count: int, tmp_path: Path):
    data = builtin_declaration_data("global-mammals")
    data["item"]["expand"]["count"] = count
    return parse_declaration(data, "global-mammals/defs.yaml")


def test_the_items_of_a_cube_are_named_after_its_entities(tmp_path: Path):
    declaration = mammals(3, tmp_path)
    write_ebv_cube(tmp_path / declaration.source.local, [2], 3, 9, height=2, width=2)
    plans = plan_partition(
        declaration, {"scenario__time": "2__2040"}, SourceLocations({}, tmp_path)
    )
    expected = [name.replace(" ", "_") for name in species_names(3)]
    assert [p.item_id for p in plans] == [f"{name}_2_2040" for name in expected]
    assert [p.properties["species"] for p in plans] == expected
    assert {p.properties["scenario"] for p in plans} == {"SSP2-RCP4.5"}


def test_a_cube_with_too_few_names_or_none_is_refused_naming_the_field(tmp_path: Path):
    declaration = mammals(4, tmp_path)
    cube = tmp_path / declaration.source.local
    write_ebv_cube(cube, [1], 3, 9, height=1, width=1)
    with pytest.raises(ConfigError, match=r"item\.expand\.names: .* names 3 entities in 'entity'"):
        entity_names(declaration, str(cube))
    other = parse_declaration(
        {
            **builtin_declaration_data("global-mammals"),
            "item": {
                **builtin_declaration_data("global-mammals")["item"],
                "expand": {
                    **builtin_declaration_data("global-mammals")["item"]["expand"],
                    "count": 3,
                    "names": {"variable": "species_name", "netcdf_variable": "taxa"},
                },
            },
        },
        "global-mammals/defs.yaml",
    )
    with pytest.raises(ConfigError, match=r"no variable 'taxa' \(it has: crs, entity, lat, lon\)"):
        entity_names(other, str(cube))


def test_names_need_a_local_source():
    data = builtin_declaration_data("global-mammals")
    data["source"] = {"url": "https://example.org/cube.nc"}
    with pytest.raises(ConfigError, match=r"item\.expand\.names: .* must be `local`"):
        parse_declaration(data, "global-mammals/defs.yaml")
