"""STAC items and collections built from real COGs, every one validated offline."""

from __future__ import annotations

import copy
import hashlib
import importlib.resources
import itertools
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.warp
from rasterio.crs import CRS
from rasterio.warp import transform_geom

from bq_pipelines.lib.cog import CogInfo, CogSettings, RasterInput, to_cog
from bq_pipelines.lib.errors import StacValidationError
from bq_pipelines.lib.stac import (
    CLASSIFICATION_SCHEMA,
    EO_SCHEMA,
    FILE_SCHEMA,
    ITEM_ASSETS_SCHEMA,
    PROJECTION_SCHEMA,
    RASTER_SCHEMA,
    build_collection,
    multihash_sha256,
    validate,
)
from bq_pipelines_testkit.rasters import (
    CUSTOM_LCC_WKT,
    CUSTOM_UTM25S_WKT,
    RasterSpec,
    raster_transform,
    write_raster,
)
from bq_pipelines_tests.fixtures.stac_items import (
    LEGACY_PROPERTIES,
    SPECS,
    Cog,
    item_for,
    make_cog,
)
from bq_pipelines_tests.lib.band_metadata import METADATA_CASES, METADATA_PATHS, convert_by_path


@pytest.fixture(params=list(SPECS), scope="module")
def cog(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Cog:
    return make_cog(tmp_path_factory.mktemp(request.param), SPECS[request.param])


def footprint_wgs84(path: Path) -> list[tuple[float, float]]:
    """The grid's outline, densified along its four edges (rotated or not), in WGS84: the truth
    the item's bbox must contain."""
    with rasterio.open(path) as src:
        steps = np.linspace(0.0, 1.0, 50)
        w, h = src.width, src.height
        pixels = [
            *[(w * t, 0.0) for t in steps],
            *[(w, h * t) for t in steps],
            *[(w * (1 - t), h) for t in steps],
            *[(0.0, h * (1 - t)) for t in steps],
        ]
        outline = [src.transform * pixel for pixel in pixels]
        geometry = transform_geom(
            src.crs, "EPSG:4326", {"type": "LineString", "coordinates": outline}
        )
    return [tuple(point) for point in geometry["coordinates"]]


# ------------------------------------------------------------------------------ items


def test_item_is_valid_and_complete(cog: Cog) -> None:
    item = item_for(cog)

    assert item.bbox is not None and item.geometry is not None
    west, south, east, north = item.bbox
    tolerance = 1e-9
    for lon, lat in footprint_wgs84(cog.path):
        assert west - tolerance <= lon <= east + tolerance
        assert south - tolerance <= lat <= north + tolerance
    assert item.geometry["type"] == "Polygon"

    assert set(item.stac_extensions) == {PROJECTION_SCHEMA, RASTER_SCHEMA, FILE_SCHEMA}
    props = item.properties
    with rasterio.open(cog.path) as src:
        assert props["proj:shape"] == [src.height, src.width]
        assert props["proj:transform"][:6] == list(src.transform)[:6]
        epsg = src.crs.to_epsg() if src.crs.is_epsg_code else None
        dtypes, count = src.dtypes, src.count
    # The legacy field, an integer (never WKT text), beside projection v1.2's proj:code.
    assert props["proj:epsg"] == (epsg or None)
    if epsg:
        assert props["proj:code"] == f"EPSG:{epsg}"
        assert "proj:wkt2" not in props
    else:
        assert props["proj:code"] is None
        assert props["proj:wkt2"].startswith("PROJCRS[")
        assert props["proj:projjson"]["type"] == "ProjectedCRS"

    # Keyed by the item id, as in the legacy catalog (`item.assets[item.id]`).
    assert list(item.assets) == ["tas_2001_03"]
    asset = item.assets["tas_2001_03"]
    assert asset.href.startswith("https://object-store.example/")
    assert asset.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert asset.roles == ["data"]
    assert asset.title == "tas"
    bands = asset.extra_fields["raster:bands"]
    assert len(bands) == count
    for band, dtype in zip(bands, dtypes, strict=True):
        assert band["data_type"] == dtype
        transform = raster_transform(cog.spec)
        assert band["spatial_resolution"] == pytest.approx(math.hypot(transform.a, transform.d))
        assert "histogram" not in band
        stats = band["statistics"]
        assert stats["minimum"] <= stats["mean"] <= stats["maximum"]
        nodata = cog.spec.nodata
        if nodata is None:
            assert "nodata" not in band
            assert stats["valid_percent"] == 100.0
        else:
            assert band["nodata"] == ("nan" if math.isnan(nodata) else nodata)
            assert stats["valid_percent"] < 100.0
    assert asset.extra_fields["file:size"] == cog.path.stat().st_size
    sha256 = hashlib.sha256(cog.path.read_bytes()).hexdigest()
    assert asset.extra_fields["file:checksum"] == "1220" + sha256

    for key, value in LEGACY_PROPERTIES.items():
        assert props[key] == value
    assert item.collection_id == "chelsa-monthly"
    assert item.to_dict()["properties"]["datetime"] == "2001-03-01T00:00:00Z"
    assert item.to_dict()["links"], "STAC APIs refuse items without links"
    validate(item)


def test_item_is_deterministic(cog: Cog) -> None:
    first, second = item_for(cog), item_for(cog)
    assert first.to_dict() == second.to_dict()
    assert "created" not in first.properties
    validate(second)


def test_an_item_from_values_in_memory_is_the_item_read_from_its_cog(cog: Cog) -> None:
    with rasterio.open(cog.path) as src:
        values = [src.read(band, masked=True) for band in src.indexes]
    described = item_for(cog, values=values).to_dict()
    assert json.dumps(described) == json.dumps(item_for(cog).to_dict())
    # Other values are taken as they are: the statistics come from them, not from the COG.
    shifted = item_for(cog, values=[v + 1 for v in values]).to_dict()
    statistics = [b["statistics"] for b in described["assets"]["tas_2001_03"]["raster:bands"]]
    shifted_statistics = [b["statistics"] for b in shifted["assets"]["tas_2001_03"]["raster:bands"]]
    for before, after in zip(statistics, shifted_statistics, strict=True):
        if "mean" in before:
            assert after["mean"] == pytest.approx(before["mean"] + 1, rel=1e-5)


def test_values_are_ignored_when_the_statistics_read_a_decimated_raster(tmp_path: Path) -> None:
    cog = make_cog(tmp_path, RasterSpec(dtype="float32", nodata=-9999, width=300, height=200))
    with rasterio.open(cog.path) as src:
        wrong = [src.read(1, masked=True) + 100]
    decimated = item_for(cog, raster_max_size=100, values=wrong).to_dict()
    assert decimated == item_for(cog, raster_max_size=100).to_dict()


def test_item_with_a_date_range(tmp_path: Path) -> None:
    cog = make_cog(tmp_path, RasterSpec())
    start = datetime(1981, 1, 1, tzinfo=UTC)
    end = datetime(2010, 12, 31, 23, 59, 59, tzinfo=UTC)
    item = item_for(
        cog,
        datetime_=None,
        start_datetime=start,
        end_datetime=end,
        properties={"variable": "bio1", "datetime": "ignored: comes from the arguments"},
    )
    assert item.datetime is None
    assert item.to_dict()["properties"]["datetime"] is None
    assert item.properties["start_datetime"] == "1981-01-01T00:00:00Z"
    assert item.properties["end_datetime"] == "2010-12-31T23:59:59Z"
    assert item.properties["variable"] == "bio1"
    validate(item)


def test_item_needs_a_datetime(tmp_path: Path) -> None:
    cog = make_cog(tmp_path, RasterSpec())
    with pytest.raises(ValueError, match="start_datetime"):
        item_for(cog, datetime_=None)


def test_multihash_sha256() -> None:
    digest = hashlib.sha256(b"bq").hexdigest()
    assert multihash_sha256(digest) == "1220" + digest
    assert multihash_sha256(digest.upper()) == "1220" + digest
    with pytest.raises(ValueError, match="sha256"):
        multihash_sha256("abc")


# ------------------------------------------------------------------------- validation


@pytest.fixture(scope="module")
def valid_item_dict(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cog = make_cog(tmp_path_factory.mktemp("valid"), SPECS["float32-nan-custom-lcc"])
    return item_for(cog).to_dict(include_self_link=False, transform_hrefs=False)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("properties", "proj:code"), 32198, "proj:code"),
        (("properties", "proj:shape"), [200.5, 300], "proj:shape"),
        (("properties", "datetime"), "the first of March", "datetime"),
        (("assets", "tas_2001_03", "file:checksum"), "not hex!", "file:checksum"),
        (("assets", "tas_2001_03", "raster:bands"), "not a list", "raster:bands"),
        (("properties", "proj:projjson"), {"type": "NotACRS"}, "proj:projjson"),
    ],
)
def test_invalid_item_names_the_field(
    valid_item_dict: dict[str, Any],
    path: tuple[str, ...],
    value: Any,
    expected: str,
) -> None:
    broken = copy.deepcopy(valid_item_dict)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(StacValidationError, match=expected) as caught:
        validate(broken)
    message = str(caught.value)
    assert "tas_2001_03" in message
    assert "schema.json" in message or "item.json" in message
    # The failing field's path, not the whole object the oneOf of an extension schema saw.
    assert "/" + "/".join(path) in message
    assert len(message) < 600


def test_null_datetime_without_range_is_invalid(valid_item_dict: dict[str, Any]) -> None:
    broken = copy.deepcopy(valid_item_dict)
    broken["properties"]["datetime"] = None
    with pytest.raises(StacValidationError, match=r"item\.json at /properties/datetime"):
        validate(broken)


def test_tuples_are_read_as_the_arrays_a_json_writer_writes(
    valid_item_dict: dict[str, Any],
) -> None:
    as_tuples = copy.deepcopy(valid_item_dict)
    as_tuples["bbox"] = tuple(as_tuples["bbox"])
    as_tuples["properties"]["proj:shape"] = tuple(as_tuples["properties"]["proj:shape"])
    validate(as_tuples)
    as_tuples["properties"]["proj:shape"] = (200.5, 300)
    with pytest.raises(StacValidationError, match="/properties/proj:shape"):
        validate(as_tuples)


def test_a_value_with_no_json_form_is_refused_naming_the_item(
    valid_item_dict: dict[str, Any],
) -> None:
    broken = copy.deepcopy(valid_item_dict)
    broken["properties"]["datetime"] = datetime(2001, 3, 1, tzinfo=UTC)
    with pytest.raises(StacValidationError, match="no JSON form") as caught:
        validate(broken)
    assert "tas_2001_03" in str(caught.value) and "datetime" in str(caught.value)


SCIENTIFIC = "https://stac-extensions.github.io/scientific/v1.0.0/schema.json"


def test_unknown_extension_is_an_error_naming_it_never_a_download(
    valid_item_dict: dict[str, Any],
) -> None:
    item = copy.deepcopy(valid_item_dict)
    item["stac_extensions"].append(SCIENTIFIC)
    with pytest.raises(StacValidationError) as caught:
        validate(item)
    message = str(caught.value)
    assert SCIENTIFIC in message and "tas_2001_03" in message
    assert "not available offline" in message and "BQ_STAC_SCHEMAS_DIR" in message


def shipped_schema_urls() -> list[str]:
    folder = importlib.resources.files("bq_pipelines.lib") / "stac_schemas"
    return sorted(
        f"https://stac-extensions.github.io/{name.name}/{version.name}/schema.json"
        for name in folder.iterdir()
        if name.is_dir() and name.name != "proj"
        for version in name.iterdir()
        if (version / "schema.json").is_file()
    )


def test_every_extension_version_the_project_writes_is_shipped() -> None:
    shipped = set(shipped_schema_urls())
    written = {PROJECTION_SCHEMA, RASTER_SCHEMA, FILE_SCHEMA, EO_SCHEMA, ITEM_ASSETS_SCHEMA}
    assert written <= shipped
    assert "https://stac-extensions.github.io/classification/v1.1.0/schema.json" in shipped


@pytest.mark.parametrize("url", shipped_schema_urls())
def test_every_shipped_schema_resolves_its_references_offline(
    valid_item_dict: dict[str, Any], url: str
) -> None:
    # Whatever the verdict on this item, it must come from the schema itself: a reference to
    # PROJJSON, GeoJSON or the core schemas that could not be resolved offline fails differently.
    item = copy.deepcopy(valid_item_dict)
    item["stac_extensions"] = [url]
    try:
        validate(item)
    except StacValidationError as error:
        assert f"fails schema {url} at " in str(error)


def test_classification_classes_validate(valid_item_dict: dict[str, Any]) -> None:
    classification = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
    item = copy.deepcopy(valid_item_dict)
    item["stac_extensions"].append(classification)
    band = item["assets"][item["id"]]["raster:bands"][0]
    band["classification:classes"] = [
        {"value": 1, "name": "water", "description": "Open water"},
        {"value": 2, "name": "forest", "description": "Closed forest"},
    ]
    validate(item)
    band["classification:classes"][1]["value"] = "two"
    with pytest.raises(StacValidationError, match="classification:classes/1/value"):
        validate(item)


def write_schema(folder: Path, name: str, version: str, schema: dict[str, Any]) -> None:
    path = folder / name / version / "schema.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(schema))


def requiring(url: str, field: str) -> dict[str, Any]:
    """A schema, published at `url`, requiring a string property `field`."""
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": url,
        "type": "object",
        "required": ["properties"],
        "properties": {
            "properties": {
                "type": "object",
                "required": [field],
                "properties": {field: {"type": "string"}},
            }
        },
    }


def test_schemas_folder_adds_and_overrides_shipped_schemas(
    valid_item_dict: dict[str, Any], tmp_path: Path
) -> None:
    added = tmp_path / "added"
    write_schema(added, "scientific", "v1.0.0", requiring(SCIENTIFIC, "sci:doi"))
    item = copy.deepcopy(valid_item_dict)
    item["stac_extensions"].append(SCIENTIFIC)
    item["properties"]["sci:doi"] = "10.5061/dryad.s2v81"
    validate(item, added)
    item["properties"]["sci:doi"] = 10
    with pytest.raises(StacValidationError, match="/properties/sci:doi"):
        validate(item, added)

    # A file of the folder takes precedence over the shipped one of the same URL.
    replaced = tmp_path / "replaced"
    write_schema(replaced, "projection", "v1.2.0", requiring(PROJECTION_SCHEMA, "proj:centroid"))
    validate(valid_item_dict)
    with pytest.raises(StacValidationError, match=f"fails schema {PROJECTION_SCHEMA}"):
        validate(valid_item_dict, replaced)


def test_unresolvable_reference_in_a_schema_is_an_error_naming_it(
    valid_item_dict: dict[str, Any], tmp_path: Path
) -> None:
    elsewhere = "https://schemas.example.org/elsewhere/v1.0.0/schema.json"
    schema = {**requiring(SCIENTIFIC, "sci:doi"), "allOf": [{"$ref": elsewhere}]}
    write_schema(tmp_path, "scientific", "v1.0.0", schema)
    item = copy.deepcopy(valid_item_dict)
    item["stac_extensions"].append(SCIENTIFIC)
    with pytest.raises(StacValidationError, match=re.escape(elsewhere)) as caught:
        validate(item, tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_missing_schemas_folder_is_an_error(
    valid_item_dict: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(StacValidationError, match="does not exist"):
        validate(valid_item_dict, tmp_path / "nowhere")


def test_validation_reads_no_environment_variable(
    valid_item_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Settings pass the folder explicitly; a variable that names no folder changes nothing.
    monkeypatch.setenv("BQ_STAC_SCHEMAS_DIR", "/nonexistent/schemas")
    validate(valid_item_dict)


# ------------------------------------------------------------------------ collections


def test_collection_extent_is_the_union_of_items(tmp_path: Path) -> None:
    east_cog = make_cog(tmp_path, RasterSpec(origin=(-70.0, 47.0)), "east")
    west_cog = make_cog(tmp_path, RasterSpec(crs="EPSG:32198"), "west")
    first = item_for(east_cog, "a", datetime_=datetime(2001, 3, 1, tzinfo=UTC))
    second = item_for(
        west_cog,
        "b",
        datetime_=None,
        start_datetime=datetime(1990, 1, 1, tzinfo=UTC),
        end_datetime=datetime(2005, 1, 1, tzinfo=UTC),
    )
    # Items come as pystac objects or as dicts a STAC API returned.
    items: list[pystac.Item | dict[str, Any]] = [
        first,
        second.to_dict(include_self_link=False, transform_hrefs=False),
    ]
    collection = build_collection(
        collection_id="chelsa-monthly",
        title="CHELSA monthly timeseries",
        description="Monthly climate",
        license_="CC-BY-4.0",
        items=items,
        providers=[
            {"name": "WSL", "roles": ["producer", "licensor"], "url": "https://chelsa-climate.org"}
        ],
        keywords=["climate"],
        summaries={"variable": ["tas"], "proj:code": ["EPSG:4326", "EPSG:32198"]},
        item_assets={
            "data": {
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "roles": ["data"],
                "raster:bands": [{"data_type": "float32"}],
            }
        },
    )
    bbox = collection.extent.spatial.bboxes[0]
    assert first.bbox is not None and second.bbox is not None
    assert bbox == [
        min(first.bbox[0], second.bbox[0]),
        min(first.bbox[1], second.bbox[1]),
        max(first.bbox[2], second.bbox[2]),
        max(first.bbox[3], second.bbox[3]),
    ]
    start, end = collection.extent.temporal.intervals[0]
    assert start == datetime(1990, 1, 1, tzinfo=UTC)
    assert end == datetime(2005, 1, 1, tzinfo=UTC)
    assert set(collection.stac_extensions) == {PROJECTION_SCHEMA, RASTER_SCHEMA, ITEM_ASSETS_SCHEMA}
    as_dict = collection.to_dict()
    assert as_dict["providers"][0]["name"] == "WSL"
    assert as_dict["keywords"] == ["climate"]
    assert as_dict["item_assets"]["data"]["roles"] == ["data"]
    validate(collection)


def test_empty_collection_has_a_global_open_extent() -> None:
    collection = build_collection(
        collection_id="empty",
        title="Empty",
        description="Nothing yet",
        license_="proprietary",
        items=[],
    )
    assert collection.extent.spatial.bboxes == [[-180.0, -90.0, 180.0, 90.0]]
    assert collection.extent.temporal.intervals == [[None, None]]
    validate(collection)


def test_summaries_are_ranges_for_numbers_and_distinct_values_otherwise() -> None:
    from bq_pipelines.lib.stac import summarize_properties

    items = [
        {"properties": {"variable": "tas", "year": 1980}},
        {"properties": {"variable": "pr", "year": 1979}},
        {"properties": {"variable": "tas", "year": 2019, "flag": True}},
    ]
    assert summarize_properties(items, ["variable", "year", "flag", "absent"]) == {
        "variable": ["pr", "tas"],
        "year": {"minimum": 1979, "maximum": 2019},
    }


# ------------------------------------------------------------------------ fidelity


def cog_of(info: CogInfo, spec: RasterSpec | None = None) -> Cog:
    """A Cog record for a COG made by to_cog."""
    return Cog(info.path, spec or RasterSpec(), info.size, info.sha256)


def _area(ring: Sequence[Sequence[float]]) -> float:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring))) / 2


@pytest.mark.parametrize("crs", ["EPSG:32198", CUSTOM_LCC_WKT], ids=["epsg32198", "custom-lcc"])
@pytest.mark.parametrize("validity", ["nodata", "no-nodata", "mask"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "float32"])
def test_display_item_statistics_count_only_real_pixels(
    tmp_path: Path, dtype: str, validity: str, crs: str
) -> None:
    nodata = {"uint8": 255, "int8": -128, "float32": float("nan")}[dtype]
    spec = RasterSpec(
        dtype=dtype,
        crs=crs,
        nodata=nodata if validity == "nodata" else None,
        mask=validity == "mask",
        rotation=20.0,
    )
    source = write_raster(tmp_path / "src.tif", spec)
    info = to_cog(RasterInput(source), tmp_path / "display.tif", CogSettings("display"))

    item = item_for(cog_of(info, spec))

    [band] = item.assets[item.id].extra_fields["raster:bands"]
    with rasterio.open(info.path) as out:
        valid = out.dataset_mask() > 0
        values = np.ma.masked_invalid(out.read(1, masked=True))
    assert band["data_type"] == dtype
    stats = band["statistics"]
    assert stats["valid_percent"] == pytest.approx(100 * valid.mean())
    assert 40 < stats["valid_percent"] < 95  # the warp's margins are not data
    assert stats["minimum"] == values.min() and stats["maximum"] == values.max()
    assert stats["mean"] == pytest.approx(float(values.mean()), rel=1e-6)
    validate(item)


@pytest.mark.parametrize("path_kind", METADATA_PATHS)
@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_item_carries_units_scale_offset_classes_and_descriptions(
    tmp_path: Path, case: str, path_kind: str
) -> None:
    metadata, classes = METADATA_CASES[case]
    info, band_number = convert_by_path(
        path_kind, tmp_path, metadata, categorical=classes is not None
    )

    item = item_for(cog_of(info))

    asset = item.assets[item.id]
    band = asset.extra_fields["raster:bands"][0]
    assert band["unit"] == metadata.unit
    assert (band["scale"], band["offset"]) == (metadata.scale, metadata.offset)
    count = 3 if band_number == 2 else 1
    description = metadata.descriptions(count)[band_number - 1]
    assert asset.extra_fields["bands"][0] == {"name": "b1", "description": description}
    if classes is None:
        assert "classification:classes" not in band
        assert CLASSIFICATION_SCHEMA not in item.stac_extensions
    else:
        expected = [
            c if band_number == 1 or metadata.attribute_table else _without_colour(c)
            for c in classes
        ]
        assert band["classification:classes"] == expected
        assert CLASSIFICATION_SCHEMA in item.stac_extensions
    validate(item)


def _without_colour(item_class: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item_class.items() if k != "color_hint"}


@pytest.mark.parametrize(
    ("crs", "code"),
    [
        ("EPSG:32198", "EPSG:32198"),
        ("EPSG:4326", "EPSG:4326"),
        (CUSTOM_UTM25S_WKT, None),
        (CUSTOM_LCC_WKT, None),
    ],
    ids=["epsg32198", "epsg4326", "custom-utm25s", "custom-lcc"],
)
def test_proj_code_only_from_an_exact_epsg_match(
    tmp_path: Path, crs: str, code: str | None
) -> None:
    origin = (485_000.0, 9_000_000.0) if crs == CUSTOM_UTM25S_WKT else None
    spec = RasterSpec(crs=crs, origin=origin, resolution=100.0 if origin else None)
    source = write_raster(tmp_path / "src.tif", spec)
    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings())

    item = item_for(cog_of(info, spec))

    props = item.properties
    assert props["proj:code"] == code
    if code is None:
        # Published as itself: WKT2 and PROJJSON give back the same CRS.
        assert CRS.from_wkt(props["proj:wkt2"]) == CRS.from_user_input(crs)
        assert CRS.from_dict(props["proj:projjson"]) == CRS.from_user_input(crs)
    else:
        assert "proj:wkt2" not in props and "proj:projjson" not in props
    validate(item)


def test_a_rotated_grid_gets_its_true_footprint(tmp_path: Path) -> None:
    spec = RasterSpec(crs="EPSG:32198", rotation=30.0, width=300, height=100)
    source = write_raster(tmp_path / "rotated.tif", spec)
    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings())

    item = item_for(cog_of(info, spec))

    assert item.bbox is not None and item.geometry is not None
    ring = item.geometry["coordinates"][0]
    transform = raster_transform(spec)
    corners = [transform * pixel for pixel in [(0, 0), (300, 0), (300, 100), (0, 100)]]
    lons, lats = rasterio.warp.transform(spec.crs, "EPSG:4326", *zip(*corners, strict=True))
    for corner in zip(lons, lats, strict=True):
        assert min(math.dist(corner, vertex) for vertex in ring) < 1e-9
    quad = [*zip(lons, lats, strict=True), (lons[0], lats[0])]
    west, south, east, north = item.bbox
    assert _area(ring) == pytest.approx(_area(quad), rel=1e-3)  # not the envelope
    assert _area(ring) < 0.6 * (east - west) * (north - south)
    for lon, lat in footprint_wgs84(info.path):
        assert west - 1e-9 <= lon <= east + 1e-9 and south - 1e-9 <= lat <= north + 1e-9
    assert tuple(item.bbox) == info.bbox_wgs84
    native = item.properties["proj:geometry"]["coordinates"][0]
    expected_native = [corners[0], corners[3], corners[2], corners[1], corners[0]]
    assert np.allclose(native, expected_native)  # the rotated quadrilateral, closed
    validate(item)
