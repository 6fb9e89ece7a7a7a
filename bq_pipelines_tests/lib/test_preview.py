"""Thumbnails, coverage maps and item counts: rendered from generated COGs and checked pixel by
pixel (colours of the colour table or palette, nodata transparent, size)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from bq_pipelines.lib import cog, preview
from bq_pipelines.lib.preview import png, thumbnails
from bq_pipelines_testkit.rasters import BandMetadata, RasterSpec, raster_valid, write_raster
from bq_pipelines_tests.pngs import png_image, png_pixels

TABLE = {v: (v * 20, 255 - v * 20, (v * 50) % 256, 255) for v in range(12)}


def make_cog(tmp_path: Path, spec: RasterSpec, categorical: bool = False, name: str = "c") -> Path:
    source = write_raster(tmp_path / f"{name}-source.tif", spec)
    settings = cog.CogSettings(categorical=categorical)
    return cog.to_cog(cog.RasterInput(path=source), tmp_path / f"{name}.tif", settings).path


def colours(pixels: np.ndarray) -> set[tuple[int, ...]]:
    opaque = pixels[pixels[..., 3] == 255]
    return {tuple(int(c) for c in colour) for colour in opaque}


def assert_corner_transparent(pixels: np.ndarray, spec: RasterSpec) -> None:
    """The spec's invalid corner (a tenth of each side) is transparent, the rest opaque."""
    height, width = pixels.shape[:2]
    corner = pixels[: height // 10 - 1, : width // 10 - 1, 3]
    assert corner.size and (corner == 0).all()
    far = pixels[height // 10 + 1 :, width // 10 + 1 :, 3]
    assert (far == 255).all()


def test_categorical_with_colour_table_uses_its_colours_and_nodata_is_transparent(tmp_path):
    spec = RasterSpec(
        dtype="uint8",
        categorical=True,
        nodata=0,
        width=900,
        height=600,
        metadata=BandMetadata(colormap=TABLE),
    )
    thumbnail = preview.render_thumbnail(make_cog(tmp_path, spec, categorical=True))
    pixels = png_pixels(thumbnail.png)
    assert (thumbnail.width, thumbnail.height) == (256, 171)
    assert pixels.shape == (171, 256, 4)
    assert thumbnail.style == "colour table"
    assert png_image(thumbnail.png).mode == "P"  # a palette PNG, its nodata entry transparent
    # Every class of the raster (1..11) in its table colour, nothing else.
    assert colours(pixels) == {TABLE[v] for v in range(1, 12)}
    assert_corner_transparent(pixels, spec)


def test_categorical_without_colour_table_gets_the_fixed_palette_by_value(tmp_path):
    spec = RasterSpec(dtype="int16", categorical=True, nodata=-1, width=400, height=300)
    thumbnail = preview.render_thumbnail(make_cog(tmp_path, spec, True), categorical=True)
    pixels = png_pixels(thumbnail.png)
    assert thumbnail.style == "palette"
    palette = thumbnails.CATEGORY_PALETTE
    assert colours(pixels) == {(*palette[v % len(palette)], 255) for v in range(1, 12)}
    assert_corner_transparent(pixels, spec)


def test_categorical_classes_with_colour_hints_use_them(tmp_path):
    rgb = {v: (10 * v, 100, 200 - 10 * v) for v in range(1, 12)}
    table = tuple((v, f"class {v}", rgb[v]) for v in range(1, 12))
    spec = RasterSpec(
        dtype="uint8",
        categorical=True,
        nodata=0,
        metadata=BandMetadata(attribute_table=table),
    )
    thumbnail = preview.render_thumbnail(make_cog(tmp_path, spec, True), categorical=True)
    assert thumbnail.style == "class colours"
    assert colours(png_pixels(thumbnail.png)) == {(*rgb[v], 255) for v in range(1, 12)}


@pytest.mark.parametrize(
    "spec",
    [
        RasterSpec(dtype="float32", nodata=float("nan"), width=1200, height=800),
        RasterSpec(dtype="int16", nodata=-9999, width=500, height=700),
        RasterSpec(dtype="float32", mask=True, width=300, height=200),
        RasterSpec(dtype="uint16", count=2, nodata=0, crs="EPSG:32198"),
    ],
    ids=["float32-nan", "int16-nodata", "internal-mask", "uint16-2-bands-lambert"],
)
def test_continuous_is_stretched_over_the_ramp_with_nodata_transparent(tmp_path, spec):
    thumbnail = preview.render_thumbnail(make_cog(tmp_path, spec))
    pixels = png_pixels(thumbnail.png)
    assert thumbnail.style == "stretch" and png_image(thumbnail.png).mode == "P"
    assert max(thumbnail.width, thumbnail.height) == min(256, max(spec.width, spec.height))
    assert pixels.shape == (thumbnail.height, thumbnail.width, 4)
    ramp = set(thumbnails.colour_ramp())
    found = colours(pixels)
    assert found <= ramp
    # The 2-98 % stretch reaches both ends of the ramp and many levels between.
    assert {thumbnails.colour_ramp()[0], thumbnails.colour_ramp()[-1]} <= found and len(found) > 50
    assert_corner_transparent(pixels, spec)


def test_three_uint8_bands_are_rgb(tmp_path):
    spec = RasterSpec(dtype="uint8", count=3, nodata=0, width=256, height=128)
    path = make_cog(tmp_path, spec)
    thumbnail = preview.render_thumbnail(path)
    pixels = png_pixels(thumbnail.png)
    assert thumbnail.style == "rgb" and pixels.shape == (128, 256, 4)
    assert png_image(thumbnail.png).mode == "RGBA"
    with rasterio.open(path) as src:
        expected = np.moveaxis(src.read(), 0, -1)
    valid = raster_valid(spec)
    np.testing.assert_array_equal(pixels[valid][:, :3], expected[valid])
    assert (pixels[~valid][:, 3] == 0).all()


@pytest.mark.slow
def test_large_cog_is_read_from_an_overview_and_rendering_is_deterministic(tmp_path):
    spec = RasterSpec(dtype="float32", nodata=-1, width=4000, height=3000, resolution=0.001)
    path = make_cog(tmp_path, spec)
    with rasterio.open(path) as src:
        assert src.overviews(1)  # what the thumbnail reads
    first = preview.render_thumbnail(path)
    assert (first.width, first.height) == (256, 192)
    assert preview.render_thumbnail(path).png == first.png


def test_an_all_nodata_cog_gives_a_transparent_thumbnail(tmp_path):
    path = tmp_path / "empty.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=32, count=1, dtype="uint8", nodata=0,
        crs="EPSG:4326", transform=rasterio.transform.from_origin(0, 10, 0.1, 0.1),
    ) as dst:  # fmt: skip
        dst.write(np.zeros((1, 32, 64), "uint8"))
    thumbnail = preview.render_thumbnail(path)
    assert thumbnail.style == "empty"
    assert (png_pixels(thumbnail.png)[..., 3] == 0).all()


def test_a_palette_png_holds_its_palette_and_transparency():
    palette = [(0, 0, 0, 0), (255, 0, 0, 255), (0, 128, 255, 100), *thumbnails.colour_ramp()[:253]]
    indexes = np.arange(7 * 40).reshape(7, 40) % len(palette)
    data = png.palette_png(indexes.astype(np.uint8), palette)
    image = png_image(data)
    assert image.mode == "P" and image.size == (40, 7)
    np.testing.assert_array_equal(png_pixels(data), np.array(palette, np.uint8)[indexes])


def test_an_rgba_png_holds_its_pixels_and_the_same_pixels_give_the_same_bytes():
    rgba = np.random.default_rng(7).integers(0, 256, (33, 65, 4), dtype=np.uint8)
    data = png.rgba_png(rgba)
    assert png_image(data).mode == "RGBA"
    np.testing.assert_array_equal(png_pixels(data), rgba)
    assert png.rgba_png(rgba.copy()) == data  # a re-run stores nothing new


def test_thumbnail_file_name_is_beside_its_cog():
    assert preview.thumbnail_file_name("demo_landcover.tif") == "demo_landcover.tif.thumbnail.png"


def item(
    bbox: tuple[float, float, float, float],
    when: str | None = "2020-01-01T00:00:00Z",
    geometry: bool = True,
) -> dict[str, Any]:
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {
        "bbox": list(bbox),
        "geometry": {"type": "Polygon", "coordinates": [ring]} if geometry else None,
        "properties": {"datetime": when},
    }


def test_coverage_map_draws_footprints_weighted_by_overlap():
    items = [item((-75, 45, -70, 50)), item((-75, 45, -70, 50)), item((-60, 45, -55, 48), None)]
    items[2]["properties"] = {"start_datetime": "2021-01-01T00:00:00Z"}
    items.append(item((-65, 40, -64, 41), geometry=False))  # bbox only
    coverage = preview.coverage_map(items)
    assert coverage is not None
    assert coverage.footprints == 3 and coverage.max_overlap == 2
    west, south, east, north = coverage.bounds
    assert west <= -75 and east >= -55 and south <= 40 and north >= 50
    assert max(coverage.width, coverage.height) == preview.COVERAGE_MAX_SIDE
    pixels = png_pixels(coverage.png)
    assert pixels.shape == (coverage.height, coverage.width, 4)
    assert (pixels[..., 3] == 255).all()  # an opaque map

    def at(lon: float, lat: float) -> tuple[int, ...]:
        column = int((lon - west) / (east - west) * coverage.width)
        row = int((north - lat) / (north - south) * coverage.height)
        return tuple(int(c) for c in pixels[row, column, :3])

    # Over the sea (the Atlantic south of Newfoundland, off New England): once, once, none.
    once, also_once, sea = at(-57.3, 46.3), at(-64.5, 40.5), at(-67.3, 43.3)
    assert sea == preview.SEA_COLOUR
    assert once == also_once and once != sea
    assert at(-67.0, 46.5) == preview.LAND_COLOUR  # New Brunswick, outside every footprint
    twice = at(-72.3, 47.3)  # over Québec
    assert sum(twice) < sum(once)  # darker where more items overlap


def test_coverage_map_shows_land_and_sea_under_a_footprint():
    coverage = preview.coverage_map([item((-80, 40, -50, 55))])
    assert coverage is not None
    west, south, east, north = coverage.bounds
    pixels = png_pixels(coverage.png)

    def at(lon: float, lat: float) -> tuple[int, ...]:
        column = int((lon - west) / (east - west) * coverage.width)
        row = int((north - lat) / (north - south) * coverage.height)
        return tuple(int(c) for c in pixels[row, column, :3])

    land, sea = at(-73.0, 51.5), at(-57.5, 41.5)  # Québec, the Atlantic: both covered once
    assert land != sea  # the footprint is translucent: one still sees where it lies
    assert land not in (preview.LAND_COLOUR, preview.SEA_COLOUR)


def test_the_land_outlines_are_natural_earth_simplified_and_small():
    polygons = preview.land_polygons()
    assert 100 <= len(polygons) <= 200
    data = resources.files("bq_pipelines.lib").joinpath("basemap/land.json").read_bytes()
    assert 20_000 < len(data) < 100_000  # tens of kilobytes, shipped as package data
    readme = resources.files("bq_pipelines.lib").joinpath("basemap/README.md").read_text()
    assert "Natural Earth" in readme and "public domain" in readme
    lons = [x for p in polygons for ring in p["coordinates"] for x, _ in ring]
    assert min(lons) == -180 and max(lons) == 180


def test_coverage_map_of_nothing_is_none():
    assert preview.coverage_map([]) is None
    assert preview.coverage_map([{"properties": {}}]) is None


def test_items_over_time_by_month_with_gaps_then_by_year():
    monthly = [item((0, 0, 1, 1), f"2020-{m:02d}-01T00:00:00Z") for m in (1, 1, 3)]
    monthly.append({"properties": {}})
    assert preview.items_over_time(monthly) == [
        ("2020-01", 2),
        ("2020-02", 0),
        ("2020-03", 1),
        ("undated", 1),
    ]
    yearly = [item((0, 0, 1, 1), f"{y}-06-01T00:00:00Z") for y in (1980, 1980, 2019)]
    rows = preview.items_over_time(yearly)
    assert rows[0] == ("1980", 2) and rows[-1] == ("2019", 1) and len(rows) == 40
    decades = preview.items_over_time(
        [item((0, 0, 1, 1), f"{y}-01-01T00:00:00Z") for y in (1901, 1955, 2020)]
    )
    assert decades[0] == ("1900s", 1) and decades[-1] == ("2020s", 1)
