"""COG conversion: profiles, dtypes, CRSs, stacking, NetCDF subdatasets and errors."""

from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import rasterio.warp
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rio_cogeo.cogeo import cog_validate

from bq_pipelines.lib.categories import CLASSES_TAG, RAT_TAG
from bq_pipelines.lib.cog import (
    COG_ALGORITHM_VERSION,
    BandFacts,
    CogProfileName,
    CogSettings,
    RasterInput,
    band_converter,
    band_extractor,
    band_facts,
    dataset_bounds,
    describe_cog,
    to_cog,
    validate_cog,
)
from bq_pipelines.lib.errors import CogError, RasterTooLarge, SourceRefused
from bq_pipelines.lib.hashing import sha256_bytes
from bq_pipelines_testkit.rasters import (
    CUSTOM_LCC_WKT,
    CUSTOM_UTM25S_WKT,
    ENGINEERING_WKT,
    BandMetadata,
    RasterSpec,
    raster_transform,
    raster_valid,
    raster_values,
    write_huge_header,
    write_raster,
)
from bq_pipelines_tests.fixtures.local_sources import write_ebv_cube
from bq_pipelines_tests.lib.band_metadata import (
    CATEGORY_NAMES,
    CONTINUOUS,
    METADATA_CASES,
    METADATA_PATHS,
    convert_by_path,
)

NAN = float("nan")

DTYPE_CASES = {
    "uint8-categorical": (RasterSpec(dtype="uint8", nodata=0, categorical=True), True),
    "uint8-categorical-255": (RasterSpec(dtype="uint8", nodata=255, categorical=True), True),
    "int16": (RasterSpec(dtype="int16", nodata=-9999), False),
    "float32-nan": (RasterSpec(dtype="float32", nodata=NAN), False),
    "int16-3bands": (RasterSpec(dtype="int16", nodata=-9999, count=3), False),
}
CRS_CASES = {"epsg4326": "EPSG:4326", "epsg32198": "EPSG:32198", "custom-lcc": CUSTOM_LCC_WKT}
EXPECTED_PREDICTOR = {"uint8": None, "int16": "2", "float32": "3"}  # categorical uint8: none


def _same_nodata(actual: float | None, expected: float | None) -> bool:
    if expected is None or actual is None:
        return actual is expected
    return (np.isnan(actual) and np.isnan(expected)) or actual == expected


def _assert_cog_layout(path: Path, blocksize: int = 512) -> None:
    is_valid, errors, _ = cog_validate(str(path), quiet=True)
    assert is_valid, errors
    assert validate_cog(path) == []
    with rasterio.open(path) as src:
        assert src.profile["compress"] == "deflate"
        assert src.profile["tiled"]
        assert src.block_shapes[0] == (blocksize, blocksize)


@pytest.mark.parametrize("crs", CRS_CASES.values(), ids=CRS_CASES.keys())
@pytest.mark.parametrize("case", DTYPE_CASES.values(), ids=DTYPE_CASES.keys())
def test_raw_keeps_pixels_crs_grid_nodata(
    tmp_path: Path, case: tuple[RasterSpec, bool], crs: str
) -> None:
    spec, categorical = case
    spec = RasterSpec(**{**spec.__dict__, "crs": crs})
    source = write_raster(tmp_path / "src.tif", spec)

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings(categorical=categorical))

    _assert_cog_layout(info.path)
    with rasterio.open(source) as src, rasterio.open(info.path) as out:
        assert out.crs == src.crs
        assert out.transform.almost_equals(src.transform)
        assert out.dtypes == src.dtypes
        assert _same_nodata(out.nodata, spec.nodata)
        np.testing.assert_array_equal(out.read(), raster_values(spec))
        assert out.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == EXPECTED_PREDICTOR[spec.dtype]
        # Rule: halve until the smallest side fits in one block; 300x200 fits already.
        assert out.overviews(1) == []
    assert info.count == spec.count
    assert (info.width, info.height) == (spec.width, spec.height)
    if crs == CUSTOM_LCC_WKT:
        assert info.epsg is None
        assert CRS.from_wkt(info.crs) == CRS.from_wkt(CUSTOM_LCC_WKT)
    else:
        assert info.crs == crs


@pytest.mark.parametrize(
    ("spec", "categorical", "resampling"),
    [
        (
            RasterSpec(dtype="uint8", nodata=255, categorical=True, width=2000, height=2000),
            True,
            "MODE",
        ),
        (RasterSpec(dtype="float32", nodata=NAN, width=2000, height=2000), False, "AVERAGE"),
    ],
    ids=["categorical", "continuous"],
)
def test_large_raster_gets_overviews(
    tmp_path: Path, spec: RasterSpec, categorical: bool, resampling: str
) -> None:
    source = write_raster(tmp_path / "big.tif", spec)

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings(categorical=categorical))

    _assert_cog_layout(info.path)
    assert info.overview_levels == [2, 4]  # 2000 -> 1000 -> 500 (<= 512: stop)
    with rasterio.open(info.path) as out:
        assert out.tags()["OVERVIEW_RESAMPLING"] == resampling
        overview = out.read(1, out_shape=(500, 500))  # served from the 4x overview
        if categorical:
            assert set(np.unique(overview)) <= set(np.unique(raster_values(spec)))
        np.testing.assert_array_equal(out.read(), raster_values(spec))


@pytest.mark.parametrize(("width", "height", "levels"), [(600, 400, [2]), (520, 1100, [2, 4])])
def test_overviews_until_the_largest_side_fits_one_block(
    tmp_path: Path, width: int, height: int, levels: list[int]
) -> None:
    # Like GDAL's COG driver (OVERVIEWS=AUTO), and what cog_validate expects: a side over
    # 512 px without overviews is reported as a warning.
    source = write_raster(tmp_path / "in.tif", RasterSpec(width=width, height=height))
    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings())
    assert info.overview_levels == levels
    is_valid, errors, warnings_ = cog_validate(str(info.path), quiet=True)
    assert is_valid and errors == [] and warnings_ == []


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32198", CUSTOM_LCC_WKT])
def test_display_categorical_keeps_classes(tmp_path: Path, crs: str) -> None:
    spec = RasterSpec(dtype="uint8", nodata=0, categorical=True, crs=crs)
    source = write_raster(tmp_path / "src.tif", spec)

    info = to_cog(
        RasterInput(source), tmp_path / "out.tif", CogSettings("display", categorical=True)
    )

    _assert_cog_layout(info.path)
    assert info.crs == "EPSG:3857"
    with rasterio.open(info.path) as out:
        values = out.read(1)
        assert out.nodata == 0
    assert set(np.unique(values)) <= set(np.unique(raster_values(spec)))
    assert (values == 0).any() and (values != 0).any()


def test_display_continuous_stays_in_range(tmp_path: Path) -> None:
    spec = RasterSpec(dtype="float32", nodata=NAN, crs="EPSG:32198")
    source = write_raster(tmp_path / "src.tif", spec)

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings("display"))

    _assert_cog_layout(info.path)
    assert info.epsg == 3857
    expected = raster_values(spec)
    with rasterio.open(info.path) as out:
        values = out.read(1)
        assert np.isnan(out.nodata)
    valid = values[~np.isnan(values)]
    assert valid.size > 0
    assert np.nanmin(expected) <= valid.min() and valid.max() <= np.nanmax(expected)
    w, s, e, n = info.bbox_wgs84
    with rasterio.open(source) as src:
        sw, ss, se, sn = _wgs84_bbox(src)
    assert abs(w - sw) < 0.05 and abs(n - sn) < 0.05 and abs(e - se) < 0.05 and abs(s - ss) < 0.05


def _wgs84_bbox(src: rasterio.io.DatasetReader) -> tuple[float, float, float, float]:
    """The WGS84 bbox of an open dataset, as describe_cog computes it."""
    bounds: tuple[float, float, float, float] = rasterio.warp.transform_bounds(
        src.crs, "EPSG:4326", *src.bounds, densify_pts=21
    )
    return bounds


def test_display_of_global_raster_is_clipped_to_web_mercator(tmp_path: Path) -> None:
    spec = RasterSpec(
        dtype="uint8",
        nodata=0,
        categorical=True,
        width=360,
        height=180,
        origin=(-180.0, 90.0),
        resolution=1.0,
    )
    source = write_raster(tmp_path / "global.tif", spec)

    info = to_cog(
        RasterInput(source), tmp_path / "out.tif", CogSettings("display", categorical=True)
    )

    assert info.bbox_wgs84[0] == pytest.approx(-180, abs=1e-6)
    assert info.bbox_wgs84[3] == pytest.approx(85.0511, abs=1e-3)
    assert info.width < 2 * 360 and info.height < 4 * 180  # not an absurd suggested grid


def test_stacking_three_files_gives_three_bands(tmp_path: Path) -> None:
    # Different seeds, so that the band order is checked.
    specs = [RasterSpec(dtype="float32", nodata=NAN, seed=i) for i in range(3)]
    inputs = [RasterInput(write_raster(tmp_path / f"f{i}.tif", s)) for i, s in enumerate(specs)]

    info = to_cog(inputs, tmp_path / "stack.tif", CogSettings())

    _assert_cog_layout(info.path)
    assert info.count == 3
    with rasterio.open(info.path) as out, rasterio.open(inputs[0].path) as first:
        assert out.crs == first.crs and out.transform == first.transform
        assert np.isnan(out.nodata)
        for band, spec in enumerate(specs, start=1):
            np.testing.assert_array_equal(out.read(band), raster_values(spec)[0])


def test_stacking_selected_bands(tmp_path: Path) -> None:
    spec = RasterSpec(dtype="int16", nodata=-9999, count=3)
    source = write_raster(tmp_path / "three.tif", spec)

    info = to_cog(
        [RasterInput(source, bands=(3,)), RasterInput(source, bands=(1,))],
        tmp_path / "out.tif",
        CogSettings(),
    )

    with rasterio.open(info.path) as out:
        np.testing.assert_array_equal(out.read(), raster_values(spec)[[2, 0]])


@pytest.mark.parametrize(
    "other",
    [
        RasterSpec(dtype="int16", nodata=-9999, width=301),
        RasterSpec(dtype="int16", nodata=-9999, crs="EPSG:32198"),
        RasterSpec(dtype="int16", nodata=-9999, origin=(-74.0, 50.0)),
        RasterSpec(dtype="int32", nodata=-9999),
    ],
    ids=["size", "crs", "transform", "dtype"],
)
def test_stacking_mismatched_grids_names_the_input(tmp_path: Path, other: RasterSpec) -> None:
    first = write_raster(tmp_path / "first.tif", RasterSpec(dtype="int16", nodata=-9999))
    second = write_raster(tmp_path / "second.tif", other)

    with pytest.raises(CogError, match=r"second\.tif"):
        to_cog([RasterInput(first), RasterInput(second)], tmp_path / "out.tif", CogSettings())
    assert not (tmp_path / "out.tif").exists()


def test_band_selection(tmp_path: Path) -> None:
    spec = RasterSpec(dtype="int16", nodata=-9999, count=3)
    source = write_raster(tmp_path / "three.tif", spec)

    info = to_cog(RasterInput(source, bands=(3,)), tmp_path / "out.tif", CogSettings())

    assert info.count == 1
    with rasterio.open(info.path) as out:
        np.testing.assert_array_equal(out.read(1), raster_values(spec)[2])


# --- NetCDF ----------------------------------------------------------------------------------

LAT = 50.0 - 0.1 * np.arange(20) - 0.05  # north-up: what GDAL reads without flipping
LON = -75.0 + 0.1 * np.arange(30) + 0.05
EXPECTED_TRANSFORM = (0.1, 0.0, -75.0, 0.0, -0.1, 50.0)


def _write_netcdf_grid(ds: netCDF4.Dataset, with_crs: bool) -> None:
    ds.Conventions = "CF-1.8"
    ds.createDimension("lat", LAT.size)
    ds.createDimension("lon", LON.size)
    lat = ds.createVariable("lat", "f8", ("lat",))
    lat[:], lat.units, lat.standard_name = LAT, "degrees_north", "latitude"
    lon = ds.createVariable("lon", "f8", ("lon",))
    lon[:], lon.units, lon.standard_name = LON, "degrees_east", "longitude"
    if with_crs:
        crs = ds.createVariable("crs", "i4")
        crs.grid_mapping_name = "latitude_longitude"
        crs.semi_major_axis, crs.inverse_flattening = 6378137.0, 298.257223563
        crs.spatial_ref = CRS.from_epsg(4326).to_wkt()
        # GDAL's netCDF driver does not look for coordinate variables outside a variable's own
        # group; EBV cubes (variables in /scenario_n/metric_n) carry the grid here instead.
        crs.GeoTransform = "-75 0.1 0 50 0 -0.1"


def write_land_cover_nc(path: Path, with_crs: bool = True) -> np.ndarray:
    """An ESA-CCI-like NetCDF with a uint8 `lccs_class` and a second variable."""
    values = (np.arange(600).reshape(20, 30) % 11 + 1).astype("uint8")
    values[:2, :3] = 0
    with netCDF4.Dataset(path, "w") as ds:
        _write_netcdf_grid(ds, with_crs)
        lccs = ds.createVariable("lccs_class", "u1", ("lat", "lon"), fill_value=0)
        lccs[:] = values
        other = ds.createVariable("processed_flag", "u1", ("lat", "lon"))
        other[:] = 1
        if with_crs:
            lccs.grid_mapping = other.grid_mapping = "crs"
    return values


def write_ebv_nc(path: Path) -> np.ndarray:
    """An EBV-style cube: /scenario_1/metric_1/ebv_cube(entity, time, lat, lon)."""
    values = np.arange(2 * 3 * 600, dtype="float32").reshape(2, 3, 20, 30)
    with netCDF4.Dataset(path, "w") as ds:
        _write_netcdf_grid(ds, with_crs=True)
        ds.createDimension("entity", 2)
        ds.createDimension("time", 3)
        metric = ds.createGroup("scenario_1").createGroup("metric_1")
        cube = metric.createVariable(
            "ebv_cube", "f4", ("entity", "time", "lat", "lon"), fill_value=-3.4e38
        )
        cube[:] = values
        cube.grid_mapping = "/crs"
    return values


def test_netcdf_subdataset(tmp_path: Path) -> None:
    values = write_land_cover_nc(tmp_path / "lc.nc")

    info = to_cog(
        RasterInput(tmp_path / "lc.nc", subdataset="lccs_class"),
        tmp_path / "out.tif",
        CogSettings(categorical=True),
    )

    _assert_cog_layout(info.path)
    assert info.crs == "EPSG:4326" and info.dtype == "uint8" and info.nodata == 0
    with rasterio.open(info.path) as out:
        assert out.transform.almost_equals(EXPECTED_TRANSFORM)
        np.testing.assert_array_equal(out.read(1), values)


def test_netcdf_without_grid_mapping_needs_assign_crs(tmp_path: Path) -> None:
    values = write_land_cover_nc(tmp_path / "lc.nc", with_crs=False)
    source = RasterInput(tmp_path / "lc.nc", subdataset="lccs_class")

    with pytest.raises(CogError, match=r"lc\.nc.*has no CRS; set assign_crs"):
        to_cog(source, tmp_path / "out.tif", CogSettings(categorical=True))

    info = to_cog(
        source, tmp_path / "out.tif", CogSettings(categorical=True, assign_crs="EPSG:4326")
    )
    assert info.crs == "EPSG:4326"
    with rasterio.open(info.path) as out:
        np.testing.assert_array_equal(out.read(1), values)


def test_ebv_group_subdataset_band(tmp_path: Path) -> None:
    values = write_ebv_nc(tmp_path / "ebv.nc")
    # GDAL flattens (entity, time) into bands, time varying fastest: entity 1, time 2 -> band 5.
    source = RasterInput(tmp_path / "ebv.nc", "/scenario_1/metric_1/ebv_cube", bands=(5,))
    assert source.gdal_name() == f'NETCDF:"{tmp_path / "ebv.nc"}":/scenario_1/metric_1/ebv_cube'

    info = to_cog(source, tmp_path / "out.tif", CogSettings())

    _assert_cog_layout(info.path)
    assert info.crs == "EPSG:4326" and info.count == 1
    with rasterio.open(info.path) as out:
        assert out.transform.almost_equals(EXPECTED_TRANSFORM)
        np.testing.assert_array_equal(out.read(1), values[1, 1])


# --- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CogError, match=r"nothere\.tif"):
        to_cog(RasterInput(tmp_path / "nothere.tif"), tmp_path / "out.tif", CogSettings())


def test_corrupt_file_names_path_and_reason(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))

    with pytest.raises(CogError, match=r"corrupt\.tif: cannot read raster: .+"):
        to_cog(RasterInput(corrupt), tmp_path / "out.tif", CogSettings())
    assert list(tmp_path.iterdir()) == [corrupt]  # no temp file left behind


def test_no_crs(tmp_path: Path) -> None:
    source = tmp_path / "nocrs.tif"
    with rasterio.open(
        source,
        "w",
        driver="GTiff",
        width=10,
        height=10,
        count=1,
        dtype="uint8",
        transform=rasterio.transform.from_origin(0, 10, 1, 1),
    ) as dst:
        dst.write(np.ones((1, 10, 10), "uint8"))

    with pytest.raises(CogError, match=r"nocrs\.tif: has no CRS; set assign_crs"):
        to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings())

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings(assign_crs="EPSG:32198"))
    assert info.crs == "EPSG:32198"


def test_missing_band(tmp_path: Path) -> None:
    source = write_raster(tmp_path / "one.tif", RasterSpec())
    with pytest.raises(CogError, match=r"one\.tif: band 2 does not exist"):
        to_cog(RasterInput(source, bands=(2,)), tmp_path / "out.tif", CogSettings())


def test_nodata_override(tmp_path: Path) -> None:
    spec = RasterSpec(dtype="int16", nodata=None)
    source = write_raster(tmp_path / "src.tif", spec)

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings(nodata=-1))

    assert info.nodata == -1
    with rasterio.open(info.path) as out:
        np.testing.assert_array_equal(out.read(), raster_values(spec))


def test_validate_cog_reports_plain_tiff(tmp_path: Path) -> None:
    plain = write_raster(tmp_path / "plain.tif", RasterSpec(width=1200, height=1100))
    assert validate_cog(plain) != []


def test_describe_cog(tmp_path: Path) -> None:
    source = write_raster(tmp_path / "src.tif", RasterSpec(crs="EPSG:32198", nodata=NAN))
    to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings())

    info = describe_cog(tmp_path / "out.tif", "raw")

    assert info.size == (tmp_path / "out.tif").stat().st_size
    assert len(info.sha256) == 64
    assert info.epsg == 32198 and info.crs == "EPSG:32198"
    assert info.bounds == (-300_000.0, 300_000.0, 0.0, 500_000.0)
    west, south, east, north = info.bbox_wgs84
    assert -80 < west < east < -60 and 40 < south < north < 55
    assert info.dtype == "float32" and info.nodata is not None and np.isnan(info.nodata)


def test_fingerprint_is_stable_and_follows_settings() -> None:
    base = CogSettings()
    assert base.fingerprint() == CogSettings().fingerprint()
    assert CogSettings(nodata=NAN).fingerprint() == CogSettings(nodata=NAN).fingerprint()
    variants = [
        CogSettings(profile="display"),
        CogSettings(categorical=True),
        CogSettings(assign_crs="EPSG:4326"),
        CogSettings(nodata=0),
        CogSettings(nodata=NAN),
        CogSettings(blocksize=256),
        CogSettings(deflate_level=9),
        CogSettings(compression="zstd"),
    ]
    fingerprints = {base.fingerprint(), *(v.fingerprint() for v in variants)}
    assert len(fingerprints) == len(variants) + 1
    assert COG_ALGORITHM_VERSION  # part of the hash: bumping it changes every fingerprint


def test_default_fingerprint_is_the_one_before_compression_was_a_choice() -> None:
    """Published partitions are skipped as unchanged only if their fingerprint did not move."""
    before = {
        "profile": "raw",
        "categorical": False,
        "assign_crs": None,
        "nodata": None,
        "blocksize": 512,
        "deflate_level": 6,
    }
    payload = json.dumps({"algorithm": COG_ALGORITHM_VERSION, "settings": before}, sort_keys=True)
    assert CogSettings().fingerprint() == sha256_bytes(payload)


def test_zstd_cog_is_valid_and_keeps_the_pixels(tmp_path: Path) -> None:
    spec = RasterSpec(dtype="float32", nodata=NAN, crs="EPSG:32198", width=1200, height=800)
    source = write_raster(tmp_path / "src.tif", spec)
    zstd = to_cog(RasterInput(source), tmp_path / "zstd.tif", CogSettings(compression="zstd"))
    deflate = to_cog(RasterInput(source), tmp_path / "deflate.tif", CogSettings())

    validate_cog(zstd.path)
    with rasterio.open(zstd.path) as out, rasterio.open(deflate.path) as reference:
        assert out.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "ZSTD"
        assert reference.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert out.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"  # floating point, as DEFLATE's
        assert out.overviews(1) == reference.overviews(1)
        np.testing.assert_array_equal(out.read(1, masked=True), reference.read(1, masked=True))
    assert zstd.sha256 != deflate.sha256


def test_band_extractor_copies_one_band_at_a_time(tmp_path: Path) -> None:
    spec = RasterSpec(dtype="int16", count=5, nodata=-9999, crs="EPSG:32198")
    source = write_raster(tmp_path / "cube.tif", spec)
    work = tmp_path / "work"
    work.mkdir()
    with band_extractor(RasterInput(source), CogSettings(), work) as extract:
        third = extract(3)
        info = to_cog(third, tmp_path / "b3.tif", CogSettings())
        with pytest.raises(CogError, match="band 6 does not exist"):
            extract(6)
    with rasterio.open(info.path) as out:
        np.testing.assert_array_equal(out.read(1), raster_values(spec)[2])
        assert out.nodata == -9999 and out.crs.to_epsg() == 32198


# --- validity: every valid COG passes, stripped files never do ---------------------------------


@pytest.mark.parametrize(("width", "height"), [(512, 1100), (1100, 512), (512, 1600)])
def test_a_cog_exactly_one_block_wide_or_tall_is_valid(
    tmp_path: Path, width: int, height: int
) -> None:
    source = write_raster(tmp_path / "in.tif", RasterSpec(width=width, height=height))
    gdal_cog = tmp_path / "gdal.tif"
    rasterio.shutil.copy(str(source), str(gdal_cog), driver="COG", BLOCKSIZE=512)

    info = to_cog(RasterInput(source), tmp_path / "ours.tif", CogSettings())

    for path in (info.path, gdal_cog):
        assert validate_cog(path) == []
        with rasterio.open(path) as cog:
            assert cog.block_shapes[0] == (512, 512) and cog.overviews(1)
    if width == 512:  # what the issue saw: rio-cogeo calls even GDAL's own COG "not tiled"
        _, errors, _ = cog_validate(str(gdal_cog), quiet=True)
        assert any("not tiled" in error for error in errors)


def test_a_valid_cog_without_gdal_layout_claim_is_judged_by_its_structure(tmp_path: Path) -> None:
    source = write_raster(tmp_path / "in.tif", RasterSpec(width=512, height=1100))
    gdal_cog = tmp_path / "gdal.tif"
    rasterio.shutil.copy(str(source), str(gdal_cog), driver="COG", BLOCKSIZE=512)
    # As if another tool wrote the same bytes: GDAL no longer recognises its own layout note.
    data = gdal_cog.read_bytes()
    assert b"LAYOUT=IFDS_BEFORE_DATA" in data
    unclaimed = tmp_path / "unclaimed.tif"
    unclaimed.write_bytes(data.replace(b"LAYOUT=IFDS_BEFORE_DATA", b"LAYOUT=IFDS_BEFORE_DATX", 1))
    with rasterio.open(unclaimed) as src:
        assert "LAYOUT" not in src.tags(ns="IMAGE_STRUCTURE")

    assert validate_cog(unclaimed) == []


@pytest.mark.parametrize(
    ("width", "height", "rows_per_strip"), [(1200, 1100, 1), (512, 1100, 512), (512, 1100, 16)]
)
def test_stripped_tiffs_are_not_cogs(
    tmp_path: Path, width: int, height: int, rows_per_strip: int
) -> None:
    # 512-wide strips of 512 rows have the block shape of 512x512 tiles: only the TIFF tags
    # tell them apart.
    path = tmp_path / "strips.tif"
    spec = RasterSpec(width=width, height=height)
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
        crs="EPSG:4326", transform=rasterio.transform.from_origin(-75, 50, 0.01, 0.01),
        tiled=False, blockysize=rows_per_strip,
    ) as dst:  # fmt: skip
        dst.write(raster_values(spec))
    with rasterio.open(path) as src:
        assert src.block_shapes[0] == (rows_per_strip, width)

    assert any("not tiled" in error for error in validate_cog(path))


# --- display profile: invented pixels, masks, dtypes -----------------------------------------

DISPLAY_NODATA = {"uint8": 255, "int8": -128, "int16": -9999, "uint16": 65535, "float32": NAN}


def _source_coverage(
    out: rasterio.io.DatasetReader, spec: RasterSpec, margin: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) per output pixel: its centre falls on valid source data, or off the
    source grid or into its invalid corner, by more than `margin` source pixels either way."""
    rows, cols = np.mgrid[0 : out.height, 0 : out.width]
    xs, ys = rasterio.transform.xy(out.transform, rows.ravel(), cols.ravel())
    sx, sy = rasterio.warp.transform(out.crs, CRS.from_user_input(spec.crs), xs, ys)
    col, row = ~raster_transform(spec) * (np.asarray(sx), np.asarray(sy))
    col, row = col.reshape(rows.shape), row.reshape(rows.shape)
    corner_w, corner_h = spec.width // 10, spec.height // 10
    has_corner = spec.nodata is not None or spec.mask

    def on_grid(m: float) -> np.ndarray:
        on: np.ndarray = (
            (col >= m) & (col <= spec.width - m) & (row >= m) & (row <= spec.height - m)
        )
        return on

    def in_corner(m: float) -> np.ndarray:
        corner: np.ndarray = has_corner & (col <= corner_w + m) & (row <= corner_h + m)
        return corner

    inside = on_grid(margin) & ~in_corner(margin)
    outside = ~on_grid(-margin) | (on_grid(margin) & in_corner(-margin))
    return inside, outside


@pytest.mark.parametrize("crs", ["EPSG:32198", CUSTOM_LCC_WKT], ids=["epsg32198", "custom-lcc"])
@pytest.mark.parametrize("validity", ["nodata", "no-nodata", "mask"])
@pytest.mark.parametrize("dtype", list(DISPLAY_NODATA))
def test_display_marks_invented_pixels_keeps_masks_and_dtype(
    tmp_path: Path, dtype: str, validity: str, crs: str
) -> None:
    spec = RasterSpec(
        dtype=dtype,
        crs=crs,
        nodata=DISPLAY_NODATA[dtype] if validity == "nodata" else None,
        mask=validity == "mask",
        rotation=20.0,  # more invented pixels: the corners of the warped grid
    )
    source = write_raster(tmp_path / "src.tif", spec)

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings("display"))

    assert validate_cog(info.path) == []
    with rasterio.open(info.path) as out:
        assert out.crs == CRS.from_epsg(3857)
        assert out.dtypes == (dtype,)  # int8 stays int8
        valid = out.dataset_mask() > 0
        inside, outside = _source_coverage(out, spec)
        assert outside.sum() > 0.1 * outside.size and inside.sum() > 0.3 * inside.size
        assert not valid[outside].any(), "an invented or masked pixel reads as data"
        assert valid[inside].all(), "a pixel with source data is marked invalid"
        values = out.read(1, masked=True)
        flags = out.mask_flag_enums[0]
    expected = np.ma.masked_invalid(raster_values(spec)[0])
    expected = np.ma.masked_where(~raster_valid(spec), expected)
    assert expected.min() <= values.min() and values.max() <= expected.max()
    if validity == "nodata":
        assert _same_nodata(info.nodata, spec.nodata)
    elif validity == "mask":
        assert info.nodata is None and MaskFlags.per_dataset in flags  # the mask stays a mask
    elif dtype == "float32":
        assert info.nodata is not None and np.isnan(info.nodata)
    else:  # a value outside the data: the dtype's minimum (or maximum)
        assert info.nodata in (np.iinfo(dtype).min, np.iinfo(dtype).max)
        assert not expected.min() <= info.nodata <= expected.max()


def test_display_of_integers_using_every_value_marks_invented_pixels_with_a_mask(
    tmp_path: Path,
) -> None:
    spec = RasterSpec(dtype="uint8", crs="EPSG:32198", rotation=20.0)
    source = write_raster(tmp_path / "src.tif", spec)
    every_value = (np.arange(spec.width * spec.height) % 256).reshape(1, spec.height, spec.width)
    with rasterio.open(source, "r+") as dst:
        dst.write(every_value.astype("uint8"))  # no value is left to mean nodata

    # Nearest neighbour, so that the data keep both ends of the range.
    settings = CogSettings("display", categorical=True)
    info = to_cog(RasterInput(source), tmp_path / "out.tif", settings)

    with rasterio.open(info.path) as out:
        assert out.nodata is None and MaskFlags.per_dataset in out.mask_flag_enums[0]
        valid = out.dataset_mask() > 0
        inside, outside = _source_coverage(out, spec)
        assert not valid[outside].any() and valid[inside].all()
        assert set(np.unique(out.read(1)[inside])) > {0, 255}


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "float32"])
def test_raw_keeps_the_internal_mask_and_dtype(tmp_path: Path, dtype: str) -> None:
    spec = RasterSpec(dtype=dtype, crs="EPSG:32198", mask=True)
    source = write_raster(tmp_path / "src.tif", spec)

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings())

    _assert_cog_layout(info.path)
    with rasterio.open(info.path) as out:
        assert out.dtypes == (dtype,) and out.nodata is None
        assert MaskFlags.per_dataset in out.mask_flag_enums[0]
        np.testing.assert_array_equal(out.dataset_mask() > 0, raster_valid(spec))
        np.testing.assert_array_equal(out.read(), raster_values(spec))


# --- metadata on every path ------------------------------------------------------------------


@pytest.mark.parametrize("path_kind", METADATA_PATHS)
@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_band_metadata_survives_every_path(tmp_path: Path, case: str, path_kind: str) -> None:
    metadata, classes = METADATA_CASES[case]

    info, band = convert_by_path(path_kind, tmp_path, metadata, categorical=classes is not None)

    _assert_cog_layout(info.path)
    assert not Path(f"{info.path}.aux.xml").exists(), "nothing may live beside the COG"
    with rasterio.open(info.path) as out:
        assert out.units[0] == metadata.unit
        assert out.descriptions[0] == metadata.descriptions(3 if band == 2 else 1)[band - 1]
        assert (out.scales[0], out.offsets[0]) == (metadata.scale, metadata.offset)
        assert out.tags(1)["VARIABLE"] == "dem"
        assert out.tags()["PRODUCER"] == "bq tests"
        band_tags = out.tags(1)
        if classes is None:
            assert CLASSES_TAG not in band_tags
        elif band == 1 or metadata.attribute_table:
            assert json.loads(band_tags[CLASSES_TAG]) == classes
        else:  # GeoTIFF colour tables are for band 1 only: no colour hints for band 2
            assert json.loads(band_tags[CLASSES_TAG]) == [
                {k: v for k, v in c.items() if k != "color_hint"} for c in classes
            ]
        # GeoTIFF palettes are for band 1 of one-band files.
        if metadata.colormap and out.count == 1 and band == 1:
            colormap = out.colormap(1)
            assert all(colormap[k] == v for k, v in metadata.colormap.items())
        if metadata.attribute_table:
            table = ET.fromstring(band_tags[RAT_TAG])
            assert [row.findtext("F[2]") for row in table.iter("Row")] == ["water", "urban", "bare"]


def test_cf_flags_of_a_netcdf_variable_become_classes(tmp_path: Path) -> None:
    path = tmp_path / "lc.nc"
    with netCDF4.Dataset(path, "w") as ds:
        _write_netcdf_grid(ds, with_crs=True)
        lc = ds.createVariable("lc", "u1", ("lat", "lon"), fill_value=0)
        lc[:] = (np.arange(600).reshape(20, 30) % 3 + 1).astype("uint8")
        lc.flag_values = np.array([1, 2, 3], dtype="u1")
        lc.flag_meanings = "tree_cover water bare_areas"
        lc.flag_colors = "#00a000 #0046c8 #fff5d7"
        lc.units = "1"
        lc.grid_mapping = "crs"

    info = to_cog(
        RasterInput(path, subdataset="lc"), tmp_path / "out.tif", CogSettings(categorical=True)
    )

    with rasterio.open(info.path) as out:
        assert json.loads(out.tags(1)[CLASSES_TAG]) == [
            {"value": 1, "description": "tree cover", "name": "tree_cover", "color_hint": "00A000"},
            {"value": 2, "description": "water", "name": "water", "color_hint": "0046C8"},
            {"value": 3, "description": "bare areas", "name": "bare_areas", "color_hint": "FFF5D7"},
        ]
        assert out.units == ("1",)


# --- CRSs: exact codes, rotated grids, CRSs without a way to WGS84 ----------------------------


def test_a_crs_without_exact_epsg_code_is_described_by_its_wkt(tmp_path: Path) -> None:
    assert CRS.from_wkt(CUSTOM_UTM25S_WKT).to_epsg() == 32000  # PROJ's fuzzy guess
    spec = RasterSpec(crs=CUSTOM_UTM25S_WKT, origin=(485_000.0, 9_000_000.0), resolution=100.0)
    source = write_raster(tmp_path / "utm.tif", spec)

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings())

    assert info.epsg is None
    assert CRS.from_wkt(info.crs) == CRS.from_wkt(CUSTOM_UTM25S_WKT)


@pytest.mark.parametrize("profile", ["raw", "display"])
def test_a_rotated_grid_keeps_its_rotation_and_footprint(
    tmp_path: Path, profile: CogProfileName
) -> None:
    spec = RasterSpec(crs="EPSG:32198", rotation=30.0, nodata=-9999, dtype="int16")
    source = write_raster(tmp_path / "rotated.tif", spec)

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings(profile))

    with rasterio.open(info.path) as out:
        if profile == "raw":
            assert out.transform.almost_equals(raster_transform(spec))
            np.testing.assert_array_equal(out.read(), raster_values(spec))
        else:
            assert out.transform.is_rectilinear
    corners = [
        raster_transform(spec) * corner for corner in [(0, 0), (300, 0), (300, 200), (0, 200)]
    ]
    lons, lats = rasterio.warp.transform(spec.crs, "EPSG:4326", *zip(*corners, strict=True))
    west, south, east, north = info.bbox_wgs84
    # GDAL sizes the warped grid from sampled edges: it may miss a corner by under a pixel.
    tolerance = 1e-9 if profile == "raw" else 0.015
    assert west - tolerance <= min(lons) and max(lons) <= east + tolerance
    assert south - tolerance <= min(lats) and max(lats) <= north + tolerance
    assert west == pytest.approx(min(lons), abs=0.02) and north == pytest.approx(
        max(lats), abs=0.02
    )


@pytest.mark.parametrize("profile", ["raw", "display"])
def test_a_crs_without_a_way_to_wgs84_fails_before_anything_is_written(
    tmp_path: Path, profile: CogProfileName
) -> None:
    source = write_raster(tmp_path / "site.tif", RasterSpec(crs=ENGINEERING_WKT))
    out_dir = tmp_path / "out"

    with pytest.raises(CogError) as caught:
        to_cog(RasterInput(source), out_dir / "site.tif", CogSettings(profile))

    message = str(caught.value)
    assert message.startswith(f'{source}: CRS "Site grid" has no transformation to WGS84')
    assert "Traceback" not in message and "projjson" not in message.lower()
    assert list(out_dir.iterdir()) == []


def test_stacking_with_an_engineering_crs_fails_naming_the_input(tmp_path: Path) -> None:
    first = write_raster(tmp_path / "first.tif", RasterSpec(crs=ENGINEERING_WKT))
    with pytest.raises(CogError, match=r"first\.tif: CRS \"Site grid\""):
        to_cog([RasterInput(first), RasterInput(first)], tmp_path / "out.tif", CogSettings())


def test_a_source_placed_by_ground_control_points_is_rectified(tmp_path: Path) -> None:
    gcps = [
        GroundControlPoint(row, col, -75.0 + col * 0.01, 50.0 - row * 0.01)
        for row, col in [(0, 0), (0, 300), (200, 0), (200, 300)]
    ]
    source = tmp_path / "gcps.tif"
    spec = RasterSpec(dtype="int16", nodata=-9999)
    with rasterio.open(
        source, "w", driver="GTiff", width=300, height=200, count=1, dtype="int16",
        nodata=-9999, gcps=gcps, crs="EPSG:4326",
    ) as dst:  # fmt: skip
        dst.write(raster_values(spec))

    info = to_cog(RasterInput(source), tmp_path / "out.tif", CogSettings(categorical=True))

    assert info.crs == "EPSG:4326"
    with rasterio.open(info.path) as out:
        assert out.transform.almost_equals(rasterio.transform.from_origin(-75, 50, 0.01, 0.01))
        np.testing.assert_array_equal(out.read(), raster_values(spec))


# --- what a user reads when a source is broken, too large or not a raster ----------------------


@pytest.mark.parametrize("kept", [0.001, 0.3, 0.99])
@pytest.mark.parametrize("layout", ["striped", "tiled", "bigtiff"])
def test_a_truncated_geotiff_says_so(tmp_path: Path, layout: str, kept: float) -> None:
    whole = tmp_path / "whole.tif"
    layouts: dict[str, dict[str, Any]] = {
        "striped": {},
        "tiled": {"tiled": True, "blockxsize": 256, "blockysize": 256},
        "bigtiff": {"BIGTIFF": "YES"},
    }
    options = layouts[layout]
    values = np.random.default_rng(1).integers(0, 1000, (2, 600, 600), dtype="uint16")
    with rasterio.open(
        whole,
        "w",
        driver="GTiff",
        width=600,
        height=600,
        count=2,
        dtype="uint16",
        crs="EPSG:4326",
        transform=rasterio.transform.from_origin(-75, 50, 0.01, 0.01),
        compress="deflate",
        **options,
    ) as dst:
        dst.write(values)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * kept)])

    for settings in (CogSettings(), CogSettings(profile="display")):
        with pytest.raises(CogError) as error:
            to_cog(RasterInput(cut), tmp_path / "out.tif", settings)
        message = str(error.value)
        assert message.startswith(f"{cut}: truncated or corrupt TIFF (the file is "), message
        assert "Read failed. See previous exception" not in message
    with (
        pytest.raises(CogError, match=r"cut\.tif: truncated or corrupt TIFF"),
        band_extractor(RasterInput(cut), CogSettings(), tmp_path) as extract,
    ):
        extract(2)
    assert to_cog(RasterInput(whole), tmp_path / "out.tif", CogSettings()).count == 2


def test_corrupt_tiff_data_reports_what_gdal_says(tmp_path: Path) -> None:
    # Whole, but its compressed blocks are garbage: only GDAL's read tells.
    source = write_raster(tmp_path / "src.tif", RasterSpec(dtype="int16", nodata=-9999))
    packed = tmp_path / "packed.tif"
    rasterio.shutil.copy(source, packed, driver="GTiff", compress="deflate")
    data = bytearray(packed.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)  # zeros in the middle
    packed.write_bytes(bytes(data))
    for settings in (CogSettings(), CogSettings(profile="display")):
        with pytest.raises(CogError) as error:
            to_cog(RasterInput(packed), tmp_path / "out.tif", settings)
        message = str(error.value)
        assert message.startswith(f"{packed}: truncated or corrupt TIFF (GDAL: "), message
        assert "Read failed. See previous exception" not in message


def test_a_missing_netcdf_variable_lists_those_there_are(tmp_path: Path) -> None:
    path = tmp_path / "cube.nc"
    with netCDF4.Dataset(path, "w") as dataset:
        dataset.createDimension("lat", 4)
        dataset.createDimension("lon", 5)
        for name in ("tas", "pr", "lccs_class"):
            dataset.createVariable(name, "f4", ("lat", "lon"))[:] = np.ones((4, 5))
    settings = CogSettings(assign_crs="EPSG:4326")
    with pytest.raises(CogError) as error:
        to_cog(RasterInput(path, subdataset="tasmax"), tmp_path / "out.tif", settings)
    assert str(error.value) == f"{path}: no variable 'tasmax' (it has: tas, pr, lccs_class)"
    with (
        pytest.raises(CogError, match=r"no variable 'tasmax' \(it has: tas, pr, lccs_class\)"),
        band_extractor(RasterInput(path, subdataset="tasmax"), settings, tmp_path),
    ):
        pass
    with pytest.raises(CogError, match=r"missing\.nc\":tas: no such file"):
        to_cog(RasterInput(tmp_path / "missing.nc", "tas"), tmp_path / "out.tif", settings)


def test_a_netcdf_of_one_variable_names_it_when_another_is_declared(tmp_path: Path) -> None:
    # GDAL lists no subdatasets for a file of one raster variable (it opens it directly).
    path = tmp_path / "one.nc"
    with netCDF4.Dataset(path, "w") as dataset:
        dataset.createDimension("time", 2)
        dataset.createDimension("lat", 4)
        dataset.createDimension("lon", 5)
        dataset.createVariable("lat", "f4", ("lat",))[:] = np.arange(4) + 45.5
        dataset.createVariable("lon", "f4", ("lon",))[:] = np.arange(5) - 70.5
        dataset.createVariable("tas", "f4", ("time", "lat", "lon"))[:] = np.ones((2, 4, 5))
    settings = CogSettings(assign_crs="EPSG:4326")
    with pytest.raises(CogError) as error:
        to_cog(RasterInput(path, subdataset="tasmax"), tmp_path / "out.tif", settings)
    assert str(error.value) == f"{path}: no variable 'tasmax' (it has: tas)"
    with (
        pytest.raises(CogError, match=r"no variable 'tasmax' \(it has: tas\)"),
        band_extractor(RasterInput(path, subdataset="tasmax"), settings, tmp_path),
    ):
        pass
    assert to_cog(RasterInput(path, subdataset="tas"), tmp_path / "out.tif", settings)


def test_a_raster_over_the_pixel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    # A crafted header: 100,000 x 100,000 pixels in a 2 MB sparse file.
    huge = write_huge_header(tmp_path / "huge.tif")
    assert huge.stat().st_size < 10_000_000
    with pytest.raises(RasterTooLarge) as error:
        to_cog(RasterInput(huge), tmp_path / "out.tif", CogSettings(), max_pixels=9_000_000_000)
    assert error.value.reason == (
        "100000 x 100000 pixels x 1 bands is 10000000000 pixels, more than the limit of 9000000000"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.tif"]  # nothing converted

    # Bands count: those read, and stacked inputs add up.
    small = write_raster(tmp_path / "small.tif", RasterSpec(count=3, width=10, height=10))
    with pytest.raises(RasterTooLarge, match="10 x 10 pixels x 3 bands is 300 pixels"):
        to_cog(RasterInput(small), tmp_path / "out.tif", CogSettings(), max_pixels=299)
    with pytest.raises(RasterTooLarge, match="10 x 10 pixels x 4 bands is 400 pixels"):
        to_cog(
            [RasterInput(small, bands=(1,)), RasterInput(small)],
            tmp_path / "out.tif",
            CogSettings(),
            max_pixels=399,
        )
    assert to_cog(RasterInput(small, bands=(2,)), tmp_path / "out.tif", CogSettings(), 100)
    with (
        pytest.raises(RasterTooLarge, match="10 x 10 pixels x 1 bands is 100 pixels"),
        band_extractor(RasterInput(small), CogSettings(), tmp_path, max_pixels=99),
    ):
        pass


def test_an_xml_source_is_never_opened(tmp_path: Path) -> None:
    # A VRT, named like a GeoTIFF, pointing GDAL at a file elsewhere.
    outside = write_raster(tmp_path / "outside" / "secret.tif", RasterSpec(width=10, height=10))
    with rasterio.open(outside) as src:
        rasterio.shutil.copy(src, tmp_path / "real.vrt", driver="VRT")
    disguised = tmp_path / "root" / "layer.tif"
    disguised.parent.mkdir()
    disguised.write_bytes(b"\n  " + (tmp_path / "real.vrt").read_bytes())
    with pytest.raises(SourceRefused, match="an XML document"):
        to_cog(RasterInput(disguised), tmp_path / "out.tif", CogSettings())


# --- bands converted from memory -------------------------------------------------------------


FROM_MEMORY_CASES = {
    "float32-nodata": RasterSpec(dtype="float32", count=3, nodata=-3.4e38, crs="EPSG:32198"),
    "float32-nan": RasterSpec(dtype="float32", count=3, nodata=NAN, metadata=CONTINUOUS),
    "int16-no-nodata": RasterSpec(dtype="int16", count=3, width=700, height=600),
    "uint8-categories": RasterSpec(
        dtype="uint8", count=3, nodata=0, categorical=True, metadata=CATEGORY_NAMES
    ),
    "rotated": RasterSpec(dtype="float32", count=3, nodata=-9999, rotation=20.0),
    "internal-mask": RasterSpec(dtype="int16", count=3, mask=True),  # the staging-file path
}


@pytest.mark.parametrize("case", list(FROM_MEMORY_CASES))
@pytest.mark.parametrize("nodata", [None, -5.0])
def test_band_converter_writes_the_cog_of_the_staging_file_path(
    tmp_path: Path, case: str, nodata: float | None
) -> None:
    """Each band converted from memory: byte for byte the COG of band_extractor + to_cog, the
    same CogInfo, and the values a reader of that COG gets with masked=True."""
    spec = FROM_MEMORY_CASES[case]
    source = write_raster(tmp_path / "cube.tif", spec)
    settings = CogSettings(categorical=spec.categorical, nodata=nodata)
    work, staging = tmp_path / "work", tmp_path / "staging"
    work.mkdir()
    staging.mkdir()
    with (
        band_extractor(RasterInput(source), settings, staging) as extract,
        band_converter(RasterInput(source), settings, work) as convert,
    ):
        for band in (1, 3):
            staged = to_cog(extract(band), tmp_path / f"staged-{band}.tif", settings)
            converted = convert(band, tmp_path / "memory" / f"{band}.tif")
            assert converted.info.path.read_bytes() == staged.path.read_bytes()
            # repr: a NaN nodata is not equal to itself
            assert repr(dataclasses.replace(converted.info, path=staged.path)) == repr(staged)
            with rasterio.open(staged.path) as cog:
                expected = cog.read(1, masked=True)
            # An internal mask, or a nodata outside the dtype: the staging-file path, and the
            # item is described from the COG as before.
            if case == "internal-mask" or (nodata is not None and spec.dtype == "uint8"):
                assert converted.values is None
                continue
            assert converted.values is not None
            np.testing.assert_array_equal(converted.values.data, expected.data)
            assert converted.values.dtype == expected.dtype
            np.testing.assert_array_equal(
                np.ma.getmaskarray(converted.values), np.ma.getmaskarray(expected)
            )
            assert (converted.values.mask is np.ma.nomask) == (expected.mask is np.ma.nomask)
    assert not list(work.iterdir())  # no staging band left behind


def test_band_converter_reads_an_ebv_cube_band_by_band(tmp_path: Path) -> None:
    cube = tmp_path / "cube.nc"
    values = write_ebv_cube(cube, [1, 2], entities=4, times=3)
    source = RasterInput(cube, "/scenario_2/metric_1/ebv_cube")
    with (
        band_converter(source, CogSettings(), tmp_path) as convert,
        band_extractor(source, CogSettings(), tmp_path) as extract,
    ):
        for entity, time in ((1, 1), (3, 2), (4, 3)):
            band = (entity - 1) * 3 + time
            converted = convert(band, tmp_path / f"{band}.tif")
            staged = to_cog(extract(band), tmp_path / f"staged-{band}.tif", CogSettings())
            assert converted.info.sha256 == staged.sha256
            assert converted.values is not None
            np.testing.assert_array_equal(converted.values.data, values[2][entity - 1, time - 1])
        with pytest.raises(CogError, match="band 13 does not exist"):
            convert(13, tmp_path / "13.tif")


@pytest.mark.parametrize("rotation", [0.0, 30.0])
def test_dataset_bounds_are_rasterios(tmp_path: Path, rotation: float) -> None:
    path = write_raster(tmp_path / "r.tif", RasterSpec(rotation=rotation, width=70, height=40))
    with rasterio.open(path) as src:
        assert dataset_bounds(src.transform, src.width, src.height) == tuple(src.bounds)


def test_band_facts_are_read_once_per_file_and_kept_in_the_cache(tmp_path: Path) -> None:
    cube = tmp_path / "cube.nc"
    write_ebv_cube(cube, [1], entities=3, times=2)
    source, cache = RasterInput(cube, "/scenario_1/metric_1/ebv_cube"), tmp_path / "cache"
    facts = band_facts(source, CogSettings(), cache=cache)
    assert band_facts(source, CogSettings()) == facts  # as read without a cache
    [kept] = list(cache.iterdir())
    assert BandFacts.from_json(kept.read_text()) == facts
    # What the cache says is what the next partition gets (nothing read again)...
    edited = dataclasses.replace(facts, descriptions=("from the cache",) * len(facts.dtypes))
    kept.write_text(edited.to_json())
    assert band_facts(source, CogSettings(), cache=cache) == edited
    with band_converter(source, CogSettings(), tmp_path, facts_cache=cache) as convert:
        converted = convert(2, tmp_path / "2.tif")
    with rasterio.open(converted.info.path) as out:
        assert out.descriptions == ("from the cache",)
    # ...until the file changes: another key, the facts read again.
    write_ebv_cube(cube, [1], entities=3, times=2)
    os.utime(cube, ns=(kept.stat().st_mtime_ns + 10**9,) * 2)
    assert band_facts(source, CogSettings(), cache=cache) == facts
    assert len(list(cache.iterdir())) == 2
    # An unreadable cache file is read around, not trusted.
    for path in cache.iterdir():
        path.write_text("{not json")
    assert band_facts(source, CogSettings(), cache=cache) == facts


CLASS_TABLE = {0: (0, 0, 0, 0)} | {v: (20 * v, 255 - 20 * v, 90, 255) for v in range(1, 12)}


@pytest.mark.parametrize("profile", ["raw", "display"])
@pytest.mark.parametrize(
    "validity",
    [{"nodata": 0}, {"nodata": None}, {"mask": True}],
    ids=["nodata", "no-nodata", "mask"],
)
@pytest.mark.parametrize(
    "crs", ["EPSG:4326", "EPSG:32198", CUSTOM_LCC_WKT], ids=["4326", "32198", "no-epsg"]
)
def test_a_categorical_colour_table_is_kept_in_every_profile(
    tmp_path: Path, profile: CogProfileName, validity: dict[str, Any], crs: str
) -> None:
    """Tiles and thumbnails draw classes in the colour table: the display warp keeps it, whatever
    marks its invalid pixels, and the classes (nearest resampling, no invented values)."""
    spec = RasterSpec(
        dtype="uint8", categorical=True, crs=crs, metadata=BandMetadata(colormap=CLASS_TABLE),
        **validity,
    )  # fmt: skip
    source = write_raster(tmp_path / "classes.tif", spec)

    to_cog(
        RasterInput(source), tmp_path / "cog.tif", CogSettings(profile=profile, categorical=True)
    )

    with rasterio.open(tmp_path / "cog.tif") as out:
        table = out.colormap(1)
        values = out.read(1, masked=True)
    assert {value: table[value] for value in range(1, 12)} == {
        value: CLASS_TABLE[value] for value in range(1, 12)
    }
    assert set(np.unique(values.compressed()).tolist()) <= set(range(1, 12))
