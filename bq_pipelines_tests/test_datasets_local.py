"""The legacy datasets read from local files (and gbif_heatmaps, from the object store), and
global-mammals (one EBV cube, one item per species): declarations load with the legacy partition
counts, and one partition of each runs end to end on the real services (moto S3 +
stac-fastapi-pgstac) from generated sources, found again with pystac-client, pixels read back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pystac_client
import pytest
import rasterio

from bq_pipelines.datasets.loading import (
    builtin_declaration_data,
    builtin_declaration_path,
    load_declaration_file,
    parse_declaration,
)
from bq_pipelines.datasets.plans import SourceLocations, plan_partition, split_partition_key
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib import cog, stac
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.orchestration.jobs import discover_files
from bq_pipelines.orchestration.keys import op_name, partitions_definition
from bq_pipelines.orchestration.resources import resources_for
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.rasters import RasterSize, RasterSpec, write_raster
from bq_pipelines_testkit.runs import dataset_definitions, failure_messages, run_dataset
from bq_pipelines_testkit.values import sensor_result
from bq_pipelines_tests.fixtures.local_sources import species_names, write_ebv_cube
from bq_pipelines_tests.fixtures.services import rasterio_s3_env, services_settings

MAMMAL_YEARS = [str(year) for year in range(2015, 2056, 5)]
SMALL: RasterSize = {"width": 64, "height": 48}

PARTITION_COUNTS = {
    "ghmts": 1,
    "accessibility_to_cities": 1,
    "cec_derived_maps": 2,
    "cec_land_cover": 1,
    "cec_land_cover_percentage": 19,
    "gbif_heatmaps": 7,
    "silvis": 15,
    "colombia-lc": 4,
    "colombia_forests": 12,
    "qc_pilot_env": 30,
    "global-mammals": 45,
}
FILES_DATASETS = {"stressors_qc": 11}  # files the legacy loaded


def builtin_path(dataset_id: str) -> Path:
    return builtin_declaration_path(dataset_id)


def declaration_as(dataset_id: str, new_id: str, **changes: Any) -> Declaration:
    """A built-in declaration under another id and folder, so tests never share a collection;
    `changes` are set by dotted path, e.g. `{"item.expand.count": 6}`."""
    path = builtin_path(dataset_id)
    data = builtin_declaration_data(dataset_id)  # the component file's attributes
    data |= {"id": new_id, "folder": new_id}
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for name in parents:
            node = node[name]
        node[last] = value
    return parse_declaration(data, path.name)


@pytest.fixture
def sources_root(tmp_path: Path) -> Path:
    root = tmp_path / "sources"
    root.mkdir()
    return root


@pytest.fixture
def service_settings(tmp_path, sources_root, services_env, s3_bucket, monkeypatch) -> Settings:
    # The legacy maps of gbif_heatmaps are "already in storage": here, the test bucket.
    return services_settings(
        services_env,
        s3_bucket,
        tmp_path / "bq",
        sources_root,
        monkeypatch,
        BQ_SOURCE_BASE_URLS=f"bq-io-storage=s3://{s3_bucket}/legacy",
    )


# --- declarations ------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset_id", "count"), sorted(PARTITION_COUNTS.items()))
def test_declaration_has_the_legacy_partition_count(dataset_id: str, count: int):
    declaration = load_declaration_file(builtin_path(dataset_id))
    keys = partitions_definition(declaration.id, declaration.partitions).get_partition_keys()
    assert len(keys) == count
    if dataset_id == "global-mammals":
        return  # 229,050 items: planned separately below
    # Every partition plans, and item ids (and so object keys) are unique across the dataset.
    locations = SourceLocations(base_urls={}, local_root=Path("/data"))
    plans = [
        plan
        for key in keys
        for plan in plan_partition(declaration, _dimension_keys(declaration, key), locations)
    ]
    assert len({p.item_id for p in plans}) == len({p.file_name for p in plans}) == count


def _dimension_keys(declaration: Declaration, key: str) -> dict[str, str]:
    return {declaration.partitions.static_dimension_name: key}


@pytest.mark.parametrize(("dataset_id", "count"), sorted(FILES_DATASETS.items()))
def test_files_datasets_find_the_tifs_of_their_folder(
    dataset_id: str, count: int, sources_root: Path
):
    declaration = load_declaration_file(builtin_path(dataset_id))
    folder = sources_root / dataset_id
    folder.mkdir()
    for index in range(count):
        (folder / f"layer_{index:02d}.tif").touch()  # only globbed here, never read
    # As the legacy CSV has them: `year` holds a full date.
    (folder / "layers.csv").write_text(
        "filename,id,title,year,datatype\nlayer_03.tif,couche_03,Couche trois,2019-01-01,Byte\n"
    )
    (sources_root / "other").mkdir()
    (sources_root / "other" / "elsewhere.tif").touch()
    found = discover_files(declaration, sources_root)
    assert len(found) == count and all(name.endswith(".tif") for name in found)
    [plan] = plan_partition(
        declaration, {"file": "layer_03.tif"}, SourceLocations({}, sources_root)
    )
    assert declaration.partitions.files is not None
    with_csv = declaration.partitions.files.metadata is not None
    assert plan.item_id == ("couche_03" if with_csv else "layer_03")
    if with_csv:
        assert plan.title == "Couche trois" and plan.properties["year"] == 2019
        with pytest.raises(ConfigError, match=r"layers\.csv has no row for 'layer_04\.tif'"):
            plan_partition(declaration, {"file": "layer_04.tif"}, SourceLocations({}, sources_root))
    assert plan.sources[0].url == str((folder / "layer_03.tif").absolute())


def test_gbif_heatmaps_read_the_legacy_bucket_unless_overridden():
    declaration = load_declaration_file(builtin_path("gbif_heatmaps"))
    keys = {"taxa": "birds"}
    [default] = plan_partition(declaration, keys, SourceLocations({}, Path("/data")))
    source = "gbif-heatmaps/gbif_birds_density_06-2022.tif"
    assert default.sources[0].url == f"s3://bq-io/io/{source}"
    mirror = SourceLocations({"bq-io-storage": "https://mirror.example/bq-io/io"}, Path("/"))
    [mirrored] = plan_partition(declaration, keys, mirror)
    assert mirrored.sources[0].url == f"https://mirror.example/bq-io/io/{source}"
    # Read from `gbif-heatmaps/`, written to `gbif_heatmaps/` as the legacy did: in the same
    # bucket, the source map is never overwritten.
    assert f"{declaration.folder}/{mirrored.file_name}" != source


def test_global_mammals_plans_5090_species_per_scenario_year_on_the_right_bands(tmp_path: Path):
    declaration = load_declaration_file(builtin_path("global-mammals"))
    assert declaration.source.local is not None
    # The species names come from the cube: one scenario on a 1x1 grid is enough to plan.
    write_ebv_cube(tmp_path / declaration.source.local, [1], 5090, 9, height=1, width=1)
    names = species_names(5090)
    locations = SourceLocations({}, tmp_path)
    # GDAL numbers the bands of (entity, time, lat, lon) with time fastest (checked on a
    # generated cube in the end-to-end test): species k, year index t -> (k - 1) * 9 + t.
    for scenario, year_index in (("1", 1), ("5", 9), ("3", 4)):
        year = MAMMAL_YEARS[year_index - 1]
        plans = plan_partition(
            declaration, _dimension_keys(declaration, f"{scenario}__{year}"), locations
        )
        assert len(plans) == 5090
        for species in (1, 2, 5090):
            plan = plans[species - 1]
            # The legacy ids and object keys: `<Genus_species>_<scenario>_<year>`.
            name = names[species - 1].replace(" ", "_")
            assert plan.item_id == f"{name}_{scenario}_{year}"
            assert plan.file_name == f"global_mammal_{name}_{scenario}_{year}.tif"
            assert plan.properties["species"] == name
            assert plan.properties["year"] == int(year)
            assert plan.sources[0].bands == ((species - 1) * 9 + year_index,)
            assert plan.sources[0].subdataset == f"/scenario_{scenario}/metric_1/ebv_cube"
            assert plan.datetime == datetime(int(year), 1, 1, tzinfo=UTC)
    last = plan_partition(declaration, {"scenario__time": "2__2055"}, locations)[-1]
    assert last.sources[0].bands == (5090 * 9,)  # the last band of the cube


@pytest.mark.slow
def test_global_mammals_last_species_of_a_full_size_cube_is_readable(tmp_path: Path):
    declaration = load_declaration_file(builtin_path("global-mammals"))
    assert declaration.source.local is not None
    # Full band count (45,810 per scenario) on a tiny grid: the band count is what matters.
    cubes = write_ebv_cube(
        tmp_path / declaration.source.local, [2], 5090, len(MAMMAL_YEARS), height=4, width=6
    )
    locations = SourceLocations({}, tmp_path)
    last = plan_partition(declaration, {"scenario__time": "2__2055"}, locations)[-1]
    source = last.sources[0]
    info = cog.to_cog(
        cog.RasterInput(Path(source.url), source.subdataset, source.bands),
        tmp_path / last.file_name,
        last.cog,
    )
    with rasterio.open(info.path) as out:
        np.testing.assert_array_equal(out.read(1), cubes[2][5089, len(MAMMAL_YEARS) - 1])


# --- end to end, one partition per dataset -------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One partition of a dataset, the source file it reads and the item it must publish."""

    dataset_id: str
    partition: str
    source: str  # relative to the local data root, or to the bucket for gbif_heatmaps
    spec: RasterSpec
    item_id: str
    properties: dict[str, Any] = field(default_factory=dict)
    start: datetime | None = None
    end: datetime | None = None
    datetime: datetime | None = None
    files: bool = False  # a files (dynamic) partition: add it to the instance first
    in_bucket: bool = False
    extra_files: dict[str, str] = field(default_factory=dict)  # path under the root -> text


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


CASES = [
    Case(
        "ghmts",
        "GHMTS",
        "ghmts/lulc-human-modification-terrestrial-systems_geographic.tif",
        RasterSpec(dtype="float32", nodata=float("nan"), **SMALL),
        "GHMTS",
        {"description": "Global Human Modification of Terrestrial Systems", "version": "2016"},
        datetime=_utc(2016, 1, 1),
    ),
    Case(
        "accessibility_to_cities",
        "accessibility",
        "accessibility_to_cities/2015_accessibility_to_cities_v1.0.tif",
        RasterSpec(dtype="int32", nodata=-9999, **SMALL),
        "accessibility",
        {"full_filename": "2015_accessibility_to_cities_v1.0.tif", "year": 2015},
        datetime=_utc(2015, 1, 1),
    ),
    Case(
        "cec_land_cover_percentage",
        "7",
        "cec/CEC_land_cover_percent_class7_2020-01-01.tif",
        RasterSpec(dtype="float32", nodata=-1, crs="EPSG:32198", **SMALL),
        "cec_land_cover_percent_class_7",
        {"category": "Tropical or sub-tropical shrubland", "year": 2020, "class": 7},
        datetime=_utc(2020, 1, 1),
    ),
    Case(
        "gbif_heatmaps",
        "birds",
        "legacy/gbif-heatmaps/gbif_birds_density_06-2022.tif",
        RasterSpec(dtype="float32", crs="EPSG:3857", nodata=0, seed=3, **SMALL),
        "birds-heatmap",
        {"taxa": "birds", "description": "All GBIF bird occurrences (class=Aves)"},
        datetime=_utc(2006, 1, 1),
        in_bucket=True,
    ),
    Case(
        "silvis",
        "GPP8__seasonality",
        "silvis/dhi_gppqa_f_seasonality.tif",
        RasterSpec(dtype="int16", nodata=-32768, crs="EPSG:32198", **SMALL),
        "GPP8_seasonality",
        {"variable": "GPP8", "index": "seasonality"},
        datetime=_utc(2003, 1, 1),
        start=_utc(2003, 1, 1),
        end=_utc(2014, 12, 31, 23, 59, 59),
    ),
    Case(
        "stressors_qc",
        "routes.tif",
        "stressors_qc/routes.tif",
        RasterSpec(dtype="uint8", nodata=255, categorical=True, crs="EPSG:32198", **SMALL),
        "routes_principales",
        {"full_filename": "routes.tif", "variable": "routes_principales", "year": 2018},
        datetime=_utc(2018, 1, 1),
        files=True,
        extra_files={
            "stressors_qc/layers.csv": "filename,id,title,year,datatype\n"
            "routes.tif,routes_principales,Routes principales,2018-01-01,Byte\n"
        },
    ),
    Case(
        "colombia-lc",
        "2010-2012",
        "colombia-lc/colombia_cobertura_tierra_2010_2012.tif",
        RasterSpec(dtype="uint8", nodata=0, categorical=True, origin=(-79.0, 12.0), **SMALL),
        "COLOMBIA-LC-2010-2012",
        {"year": "2010-2012", "description": "Colombia Land Cover - 30m - 2010-2012"},
        datetime=_utc(2000, 1, 1),
    ),
    Case(
        "colombia_forests",
        "2015_2016",
        "colombia_forests/DCCB_SMBYC_CBBQ_2015_2016.tif",
        RasterSpec(dtype="uint8", nodata=0, categorical=True, origin=(-79.0, 12.0), **SMALL),
        "forests_2015_2016",
        {"years": "2015_2016"},
        datetime=_utc(2015, 1, 1),
        start=_utc(2015, 1, 1),
        end=_utc(2016, 12, 31, 23, 59, 59),
    ),
]


def read_pixels(path: str, env: dict[str, str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio_s3_env(env) if env else rasterio.Env(), rasterio.open(path) as src:
        profile = {"crs": src.crs, "transform": src.transform, "nodata": src.nodata}
        return src.read(), profile | {"dtype": src.dtypes[0]}


def cog_key(declaration: Declaration, file_name: str) -> str:
    return f"io/{declaration.folder}/{file_name}"


def search_items(stac_api_url: str, collection_id: str) -> dict[str, Any]:
    search = pystac_client.Client.open(stac_api_url).search(collections=[collection_id])
    return {item.id: item for item in search.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.dataset_id for c in CASES])
def test_one_partition_end_to_end(
    case: Case,
    service_settings,
    sources_root,
    stac_api_url,
    s3_client,
    s3_bucket,
    gdal_s3_env,
    unique_id,
    tmp_path,
):
    source = write_raster(
        (tmp_path / "bucket" if case.in_bucket else sources_root) / case.source, case.spec
    )
    if case.in_bucket:
        s3_client.upload_file(str(source), s3_bucket, case.source)
    for path, text in case.extra_files.items():
        (sources_root / path).write_text(text, encoding="utf-8")
    declaration = declaration_as(case.dataset_id, f"{case.dataset_id.lower()}-{unique_id}")
    instance = dg.DagsterInstance.ephemeral()
    if case.files:
        partitions_def = partitions_definition(declaration.id, declaration.partitions)
        assert isinstance(partitions_def, dg.DynamicPartitionsDefinition)
        assert partitions_def.name is not None
        instance.add_dynamic_partitions(partitions_def.name, [case.partition])

    assert run_dataset(declaration, service_settings, instance, [case.partition]), failure_messages(
        instance
    )

    items = search_items(stac_api_url, declaration.id)
    assert set(items) == {case.item_id}
    item = items[case.item_id]
    stac.validate(item)
    assert item.properties.items() >= case.properties.items()
    assert item.datetime == case.datetime
    if case.start is not None:
        assert item.common_metadata.start_datetime == case.start
        assert item.common_metadata.end_datetime == case.end
    key = cog_key(declaration, Path(case.source).name)
    assert item.assets[item.id].href == f"{service_settings.public_base_url}/{key}"
    pixels, profile = read_pixels(f"s3://{s3_bucket}/{key}", gdal_s3_env)
    expected, expected_profile = read_pixels(str(source))
    np.testing.assert_array_equal(pixels, expected)
    np.testing.assert_equal(profile, expected_profile)  # nodata may be NaN


# --- stressors_qc: files discovered by the sensor ---------------------------------------------


def test_stressors_sensor_adds_new_files_and_a_file_materializes(
    service_settings, sources_root, stac_api_url, s3_bucket, gdal_s3_env, unique_id
):
    declaration = declaration_as("stressors_qc", f"stressors_qc-{unique_id}")
    folder = sources_root / "stressors_qc"
    spec = RasterSpec(dtype="float32", nodata=-9999, crs="EPSG:4326", origin=(-75.0, 50.0))
    for name in ("slope.tif", "tmean.tif"):
        write_raster(folder / name, RasterSpec(**{**spec.__dict__, **SMALL}))
    (folder / "layers.csv").write_text(
        "filename,id,title,year,datatype\n"
        "slope.tif,slope,Pente,2019-01-01,float32\n"
        "tmean.tif,tmean,Température,2020-01-01,float32\n"
        "water.tif,water_norm,Milieux humides,2021-01-01,float32\n",
        encoding="utf-8",
    )
    assert discover_files(declaration, sources_root) == ["slope.tif", "tmean.tif"]

    instance = dg.DagsterInstance.ephemeral()
    defs = dataset_definitions(declaration, service_settings)
    sensor = defs.resolve_sensor_def(op_name(declaration.id, "files_sensor"))
    partitions_name = op_name(declaration.id, "files")
    resources = {"sources": resources_for(service_settings)["sources"]}

    def evaluate() -> list[str] | str:
        """Run the sensor once and apply what it asks, as the daemon would."""
        result = sensor_result(
            sensor, dg.build_sensor_context(instance=instance, resources=resources)
        )
        if isinstance(result, dg.SkipReason):
            return result.skip_message or ""
        assert result.dynamic_partitions_requests is not None
        added = [key for r in result.dynamic_partitions_requests for key in r.partition_keys]
        instance.add_dynamic_partitions(partitions_name, added)
        return added

    assert evaluate() == ["slope.tif", "tmean.tif"]
    water = write_raster(folder / "water.tif", RasterSpec(**{**spec.__dict__, **SMALL, "seed": 7}))
    assert evaluate() == ["water.tif"]  # only the new file
    assert "no new files among 3" in evaluate()
    assert instance.get_dynamic_partitions(partitions_name) == [
        "slope.tif",
        "tmean.tif",
        "water.tif",
    ]

    assert run_dataset(declaration, service_settings, instance, ["water.tif"]), failure_messages(
        instance
    )
    items = search_items(stac_api_url, declaration.id)
    assert set(items) == {"water_norm"}
    assert items["water_norm"].properties["full_filename"] == "water.tif"
    assert items["water_norm"].properties["year"] == 2021
    pixels, _ = read_pixels(f"s3://{s3_bucket}/{cog_key(declaration, 'water.tif')}", gdal_s3_env)
    np.testing.assert_array_equal(pixels, read_pixels(str(water))[0])


# --- global-mammals: one scenario-year of a 6-species cube --------------------------------------


def test_global_mammals_partition_publishes_one_item_per_species_band(
    service_settings, sources_root, stac_api_url, s3_bucket, gdal_s3_env, unique_id
):
    species, scenario, year = 6, 3, "2025"
    year_index = MAMMAL_YEARS.index(year)
    declaration = declaration_as(
        "global-mammals", f"global-mammals-{unique_id}", **{"item.expand.count": species}
    )
    cube_path = sources_root / declaration.source.local
    # Two scenarios, so that reading the wrong group shows; all 9 years, as in the real cube.
    cubes = write_ebv_cube(cube_path, [1, scenario], species, len(MAMMAL_YEARS))

    instance = dg.DagsterInstance.ephemeral()
    assert run_dataset(declaration, service_settings, instance, [f"{scenario}__{year}"]), (
        failure_messages(instance)
    )

    items = search_items(stac_api_url, declaration.id)
    names = [name.replace(" ", "_") for name in species_names(species)]
    assert sorted(items) == sorted(f"{name}_{scenario}_{year}" for name in names)
    for k, name in enumerate(names, 1):
        item = items[f"{name}_{scenario}_{year}"]
        stac.validate(item)
        # The legacy properties: the species and SSP/RCP scenario by name, the year a number.
        assert item.properties["species"] == name
        assert item.properties["scenario"] == "SSP3-RCP6.0"
        assert item.properties["year"] == int(year)
        assert item.properties["entity"] == k
        assert item.datetime == _utc(int(year), 1, 1)
        key = cog_key(declaration, f"global_mammal_{item.id}.tif")
        pixels, profile = read_pixels(f"s3://{s3_bucket}/{key}", gdal_s3_env)
        # The array written to the cube, not what GDAL reads from it, is the reference.
        np.testing.assert_array_equal(pixels[0], cubes[scenario][k - 1, year_index])
        assert profile["crs"] == "EPSG:4326"

    collection = pystac_client.Client.open(stac_api_url).get_collection(declaration.id)
    assert collection is not None
    west, south, east, north = collection.extent.spatial.bboxes[0]
    for item in items.values():
        assert west <= item.bbox[0] and south <= item.bbox[1]
        assert east >= item.bbox[2] and north >= item.bbox[3]
    [[start, end]] = collection.extent.temporal.intervals
    assert start is not None and end is not None
    assert start <= _utc(int(year), 1, 1) <= end
    variables = split_partition_key(declaration, {"scenario__time": f"{scenario}__{year}"})
    assert variables["year_band"] == year_index + 1
