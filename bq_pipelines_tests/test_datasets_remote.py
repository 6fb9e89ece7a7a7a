"""The remote legacy datasets (CHELSA, ESA CCI LC, GFW, SoilGrids, EarthEnv): their declarations
load with the partition counts of the README's "Datasets" table, and one partition of each,
served from a local mirror of the legacy host, is materialized on the real services and found
with its legacy item id and properties."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import numpy as np
import pystac_client
import pytest
import rasterio

from bq_pipelines.lib import cog, stac
from bq_pipelines.orchestration.keys import partitions_definition
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.rasters import RasterSize, RasterSpec
from bq_pipelines_testkit.runs import failure_messages, run_dataset
from bq_pipelines_tests.fixtures.legacy_mirror import (
    C3S_GRID_CRS,
    C3S_GRID_TRANSFORM,
    builtin_declaration,
    mirror_base_urls,
    put_legacy_raster,
    write_c3s_land_cover_nc,
)
from bq_pipelines_tests.fixtures.services import services_settings

CHELSA = "https://os.zhdk.cloud.switch.ch/envicloud/chelsa/chelsa_V2/GLOBAL"
GFW = "https://storage.googleapis.com/earthenginepartners-hansen/GFC-2020-v1.8"
SOILGRIDS = "https://files.isric.org/soilgrids/latest/data_aggregated/1000m"
EARTHENV = "https://data.earthenv.org"
ESA_CCI = "ftp://geo10.elie.ucl.ac.be/CCI/LandCover/byYear"

# Partition counts of the README's "Datasets" table (chelsa-clim's variables: their own test).
PARTITION_COUNTS = {
    "chelsa-clim-proj": 855,
    "chelsa-monthly": 10 * 492,
    "esacci-lc": 29,
    "gfw-treecover2000": 504,
    "gfw-gain": 504,
    "gfw-lossyear": 504,
    "soilgrids": 79,
    "earthenv_topography": 8,
    "earthenv_landcover": 12,
    "earthenv_habitat_heterogeneity": 14,
}
REMOTE_DATASETS = ["chelsa-clim", *PARTITION_COUNTS]

SMALL: RasterSize = {"width": 64, "height": 48}


@dataclass(frozen=True)
class LegacyPartition:
    """One partition of a legacy dataset: where the legacy script read it, what it published."""

    dataset: str
    partition: str
    legacy_url: str  # the source URL the legacy script fetched
    item_id: str
    file_name: str
    properties: dict[str, Any]
    datetime: datetime
    spec: RasterSpec = field(default_factory=lambda: RasterSpec(**SMALL))

    def __str__(self) -> str:
        return f"{self.dataset}[{self.partition}]"


def _multi(**keys: str) -> str:
    return str(dg.MultiPartitionKey(keys))


def _utc(year: int, month: int = 1, day: int = 1) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


CASES = [
    LegacyPartition(
        "chelsa-clim",
        "pet_penman_mean",
        f"{CHELSA}/climatologies/1981-2010/bio/CHELSA_pet_penman_mean_1981-2010_V.2.1.tif",
        "pet_penman_mean",
        "CHELSA_pet_penman_mean_1981-2010_V.2.1.tif",
        {"variable": "pet_penman_mean", "period": "1981-2010", "version": 2.1, "model": "past"},
        _utc(1981),
        RasterSpec(dtype="float32", nodata=-99999.0, **SMALL),
    ),
    LegacyPartition(
        "chelsa-clim-proj",
        "bio12__2041-2070__mpi-esm1-2-hr__ssp370",
        f"{CHELSA}/climatologies/2041-2070/MPI-ESM1-2-HR/ssp370/bio/"
        "CHELSA_bio12_2041-2070_mpi-esm1-2-hr_ssp370_V.2.1.tif",
        "bio12_2041-2070_mpi-esm1-2-hr_ssp370",
        "CHELSA_bio12_2041-2070_mpi-esm1-2-hr_ssp370_V.2.1.tif",
        {
            "variable": "bio12",
            "time_span": "2041-2070",
            "model": "mpi-esm1-2-hr",
            "rcp": "ssp370",
            "version": 2.1,
        },
        _utc(2041),
        RasterSpec(dtype="float32", nodata=float("nan"), **SMALL),
    ),
    LegacyPartition(
        "chelsa-monthly",
        _multi(date="1985-07", variable="pet"),
        f"{CHELSA}/monthly/pet/CHELSA_pet_penman_07_1985_V.2.1.tif",
        "pet_penman_07_1985",
        "CHELSA_pet_penman_07_1985_V.2.1.tif",
        {
            "variable": "pet",
            "year": 1985,
            "month": 7,
            "version": 2.1,
            "description": "CHELSA Monthly - 1985-7",
        },
        _utc(1985, 7, 1),
        RasterSpec(dtype="int16", nodata=-32768, **SMALL),
    ),
    LegacyPartition(
        "esacci-lc",
        "2003",
        f"{ESA_CCI}/ESACCI-LC-L4-LCCS-Map-300m-P1Y-2003-v2.0.7.tif",
        "esacci-lc-2003",
        "ESACCI-LC-L4-LCCS-Map-300m-P1Y-2003-v2.0.7.tif",
        {"year": 2003, "version": "2.0.7"},
        _utc(2003),
        RasterSpec(dtype="uint8", nodata=0, categorical=True, **SMALL),
    ),
    LegacyPartition(
        "gfw-treecover2000",
        "50N_080W",
        f"{GFW}/Hansen_GFC-2020-v1.8_treecover2000_50N_080W.tif",
        "50N_080W",
        "Hansen_GFC-2020-v1.8_treecover2000_50N_080W.tif",
        {"grid": "50N_080W"},
        _utc(2000),
        RasterSpec(dtype="uint8", **SMALL),
    ),
    LegacyPartition(
        "gfw-gain",
        "00N_000E",
        f"{GFW}/Hansen_GFC-2020-v1.8_gain_00N_000E.tif",
        "_gain_00N_000E",
        "Hansen_GFC-2020-v1.8_gain_00N_000E.tif",
        {"grid": "_gain_00N_000E"},
        _utc(2000),
        RasterSpec(dtype="uint8", categorical=True, **SMALL),
    ),
    LegacyPartition(
        "gfw-lossyear",
        "10S_070W",
        f"{GFW}/Hansen_GFC-2020-v1.8_lossyear_10S_070W.tif",
        "_10S_070W",
        "Hansen_GFC-2020-v1.8_lossyear_10S_070W.tif",
        {"grid": "_10S_070W"},
        _utc(2000),
        RasterSpec(dtype="uint8", categorical=True, **SMALL),
    ),
    LegacyPartition(
        "soilgrids",
        "phh2o_15-30cm",
        f"{SOILGRIDS}/phh2o/phh2o_15-30cm_mean_1000.tif",
        "phh2o_15-30cm",
        "phh2o_15-30cm_mean_1000.tif",
        {"variable": "phh2o", "depth": "15-30cm", "version": "1"},
        _utc(2016, 7, 4),
        # The real files are in Interrupted Goode Homolosine, which has no EPSG code.
        RasterSpec(dtype="int16", crs="ESRI:54052", nodata=-32768, **SMALL),
    ),
    LegacyPartition(
        "earthenv_topography",
        "slope",
        f"{EARTHENV}/topography/slope_1KMmn_GMTEDmd.tif",
        "slope",
        "slope_1KMmn_GMTEDmd.tif",
        {"variable": "Slope"},
        _utc(2010),
        RasterSpec(dtype="float32", nodata=-9999.0, **SMALL),
    ),
    LegacyPartition(
        "earthenv_landcover",
        "7",
        f"{EARTHENV}/consensus_landcover/with_DISCover/consensus_full_class_7.tif",
        "class_7",
        "consensus_full_class_7.tif",
        {"class": "7", "description": "Cultivated and Managed Vegetation"},
        _utc(2000),
        RasterSpec(dtype="uint8", nodata=255, **SMALL),
    ),
    LegacyPartition(
        "earthenv_habitat_heterogeneity",
        "cv",
        f"{EARTHENV}/habitat_heterogeneity/1km/cv_01_05_1km_uint16.tif",
        "cv",
        "cv_01_05_1km_uint16.tif",
        {"variable": "Coefficient of variation", "relation_with_heterogeneity": "Positive"},
        _utc(2015),
        RasterSpec(dtype="uint16", nodata=65535, **SMALL),
    ),
]


@pytest.fixture
def local_root(tmp_path: Path) -> Path:
    return tmp_path / "sources"


@pytest.fixture
def mirror_settings(
    tmp_path, local_root, http_host, services_env, s3_bucket, monkeypatch
) -> Settings:
    """The real services, with every declared remote host served by `http_host`."""
    declarations = [builtin_declaration(name) for name in REMOTE_DATASETS]
    return services_settings(
        services_env,
        s3_bucket,
        tmp_path / "bq",
        local_root,
        monkeypatch,
        BQ_SOURCE_BASE_URLS=mirror_base_urls(http_host, declarations),
    )


def _read(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(path) as src:
        profile = {"crs": src.crs, "transform": src.transform, "nodata": src.nodata}
        return src.read(), profile | {"dtype": src.dtypes[0]}


def _materialize_one(dataset: str, partition: str, settings: Settings, unique_id: str) -> str:
    """Run one partition of `dataset` under a collection id of its own; return that id."""
    declaration = builtin_declaration(dataset, f"{dataset}-{unique_id}")
    instance = dg.DagsterInstance.ephemeral()
    assert run_dataset(declaration, settings, instance, [partition]), failure_messages(instance)
    return declaration.id


def _published_cog(
    collection_id: str,
    case: LegacyPartition,
    settings: Settings,
    stac_api_url: str,
    s3_client,
    download_dir: Path,
) -> Path:
    """Check the collection, the item the API returns for `case` and its object; return a copy
    of its COG."""
    client = pystac_client.Client.open(stac_api_url)
    collection = client.get_collection(collection_id)
    assert collection is not None
    stac.validate(collection)
    search = client.search(collections=[collection_id], ids=[case.item_id])
    [item] = list(search.items())
    stac.validate(item)
    assert {k: item.properties.get(k) for k in case.properties} == case.properties
    assert item.datetime == case.datetime
    key = f"io/{collection_id}/{case.file_name}"
    assert item.assets[item.id].href == f"{settings.public_base_url}/{key}"
    head = s3_client.head_object(Bucket=settings.s3_bucket, Key=key)
    assert item.assets[item.id].extra_fields["file:size"] == head["ContentLength"]
    copy = download_dir / case.file_name
    s3_client.download_file(settings.s3_bucket, key, str(copy))
    assert cog.validate_cog(copy) == []
    return copy


@pytest.mark.parametrize("case", CASES, ids=str)
def test_partition_from_the_legacy_url_is_published_with_its_legacy_item(
    case: LegacyPartition,
    mirror_settings: Settings,
    http_host,
    stac_api_url,
    s3_client,
    unique_id,
    tmp_path,
):
    source = put_legacy_raster(http_host, case.legacy_url, case.spec)

    collection_id = _materialize_one(case.dataset, case.partition, mirror_settings, unique_id)

    # The pipeline read the legacy path on the mirror, once or with ranges, nothing else.
    requested = {r.path for r in http_host.requests}
    assert requested == {urlsplit(http_host.mirror_url(case.legacy_url)).path}
    published = _published_cog(
        collection_id, case, mirror_settings, stac_api_url, s3_client, tmp_path
    )
    pixels, profile = _read(published)
    expected, expected_profile = _read(source)
    np.testing.assert_array_equal(pixels, expected)  # NaN == NaN here: raw keeps every pixel
    np.testing.assert_equal(profile, expected_profile)  # nodata may be NaN


def test_esacci_netcdf_year_reads_lccs_class_with_an_assigned_crs(
    mirror_settings: Settings, local_root, stac_api_url, s3_client, unique_id, tmp_path
):
    # 2016-2020 come from the C3S NetCDFs an operator puts under the local data root.
    values = write_c3s_land_cover_nc(
        local_root / "esacci-lc" / "C3S-LC-L4-LCCS-Map-300m-P1Y-2018-v2.1.1.nc"
    )
    case = LegacyPartition(
        dataset="esacci-lc",
        partition="2018",
        legacy_url="",  # no remote file: the C3S Climate Data Store has no plain URL
        item_id="esacci-lc-2018",
        file_name="C3S-LC-L4-LCCS-Map-300m-P1Y-2018-v2.1.1.tif",
        properties={"year": 2018, "version": "2.1.1"},
        datetime=_utc(2018),
    )

    collection_id = _materialize_one(case.dataset, case.partition, mirror_settings, unique_id)

    published = _published_cog(
        collection_id, case, mirror_settings, stac_api_url, s3_client, tmp_path
    )
    pixels, profile = _read(published)
    np.testing.assert_array_equal(pixels, values[np.newaxis])
    assert profile["crs"] == C3S_GRID_CRS
    assert profile["transform"].almost_equals(C3S_GRID_TRANSFORM)
    assert (profile["dtype"], profile["nodata"]) == ("uint8", 0)


@pytest.mark.parametrize("dataset", sorted(PARTITION_COUNTS))
def test_declaration_partition_count_matches_the_legacy_inventory(dataset: str):
    declaration = builtin_declaration(dataset)
    assert declaration.id == dataset
    keys = partitions_definition(dataset, declaration.partitions).get_partition_keys()
    assert len(keys) == PARTITION_COUNTS[dataset]


def test_chelsa_clim_lists_the_documented_bioclim_plus_variables():
    declaration = builtin_declaration("chelsa-clim")
    [variables] = declaration.partitions.static
    names = {v.value for v in variables.values}
    # The legacy documentation counted about 175 files; every CHELSA-BIOCLIM+ family is here.
    assert {f"bio{i}" for i in range(1, 20)} <= names
    for family in ("clt", "cmi", "hurs", "pet_penman", "rsds", "sfcWind", "vpd"):
        assert {f"{family}_{s}" for s in ("max", "mean", "min", "range")} <= names
    assert {"ai", "gsl", "gsp", "gst", "npp", "scd", "swb", "swe", "fcf", "fgd", "lgd"} <= names
    assert {f"kg{i}" for i in range(6)} <= names


def test_gfw_tiles_are_the_10_degree_grid_of_the_legacy_names():
    lats = [f"{n:02d}N" for n in range(80, -1, -10)] + [f"{s:02d}S" for s in range(10, 51, 10)]
    lons = [f"{w:03d}W" for w in range(180, 0, -10)] + [f"{e:03d}E" for e in range(0, 171, 10)]
    expected = {f"{lat}_{lon}" for lat in lats for lon in lons}
    for layer in ("treecover2000", "gain", "lossyear"):
        [tiles] = builtin_declaration(f"gfw-{layer}").partitions.static
        assert {v.value for v in tiles.values} == expected
