"""Benchmark: a thumbnail per item (`preview.render_thumbnail`) against reading the COG's
overview alone, same run.

Run from the project root: `.venv/bin/python bench/bench_previews.py [--size 4000] [--repeat 20]`.

Three COGs made by our `to_cog` (so with the overviews the pipeline writes): a continuous
float32 field with a NaN corner, a categorical uint8 layer with a colour table (both
`--size` px square), and a global-mammals-shaped item (720 x 360 float32, no overviews: small
enough to be read whole). For each, the median over `--repeat` interleaved runs of:
- ours: `render_thumbnail` (open, read at thumbnail size from the overviews, colour, encode PNG);
- baseline: open the COG and read band 1 at the same size (`out_shape`), i.e. the overview read
  alone, the floor of any thumbnail;
- full read (once, for scale): band 1 at full resolution, what reading without overviews costs.
Prints ms per thumbnail, the ratio ours/baseline and the PNG size.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from results import write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bq_pipelines.lib import cog, preview  # noqa: E402


def write_source(
    path: Path,
    data: np.ndarray,
    nodata: float,
    colormap: dict[int, tuple[int, int, int, int]] | None,
) -> Path:
    height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype=data.dtype,
        crs="EPSG:4326", transform=from_origin(-80, 60, 20 / width, 20 / width), nodata=nodata,
        tiled=True,
    ) as dst:  # fmt: skip
        dst.write(data, 1)
        if colormap:
            dst.write_colormap(1, colormap)
    return path


def field(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    surface = sum(
        np.sin(2 * np.pi * (rng.uniform(1, 6) * xx + rng.uniform(1, 6) * yy)) for _ in range(4)
    )
    noisy: np.ndarray = surface + rng.normal(0, 0.05, shape)
    return noisy


def make_cogs(folder: Path, size: int) -> list[tuple[str, Path, bool]]:
    continuous = field((size, size), 1).astype("float32")
    continuous[: size // 10, : size // 10] = np.nan
    classes = np.digitize(field((size, size), 2), [-2, -1, 0, 1, 2]).astype("uint8") + 1
    classes[: size // 10, : size // 10] = 0
    table = {v: (40 * v, 200 - 30 * v, 90, 255) for v in range(7)}
    mammals = field((360, 720), 3).astype("float32")
    cases = [
        (f"continuous float32 {size}x{size}", continuous, float("nan"), None, False),
        (f"categorical uint8 {size}x{size}, colour table", classes, 0, table, True),
        ("global-mammals item 720x360 float32", mammals, -1.0, None, False),
    ]
    made = []
    for index, (name, data, nodata, colormap, categorical) in enumerate(cases):
        source = write_source(folder / f"source{index}.tif", data, nodata, colormap)
        settings = cog.CogSettings(categorical=categorical)
        info = cog.to_cog(cog.RasterInput(path=source), folder / f"cog{index}.tif", settings)
        made.append((name, info.path, categorical))
    return made


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000


def overview_read(path: Path) -> None:
    with rasterio.open(path) as src:
        height, width = preview.thumbnail_shape(src.height, src.width)
        src.read(1, out_shape=(height, width), masked=True)


def full_read(path: Path) -> None:
    with rasterio.open(path) as src:
        src.read(1, masked=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000, help="side of the large COGs, px")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of each")
    args = parser.parse_args()
    print(f"bench_previews: {os.cpu_count()} cores, --size {args.size} --repeat {args.repeat}")
    with tempfile.TemporaryDirectory(prefix="bench-previews-") as tmp:
        cases = make_cogs(Path(tmp), args.size)
        rows: list[list[str | float]] = []
        print("| COG | overviews | ours (ms) | overview read (ms) | ratio | full read (ms) | PNG |")
        print("|---|---|---|---|---|---|---|")
        for name, path, categorical in cases:

            def ours(path: Path = path, categorical: bool = categorical) -> None:
                preview.render_thumbnail(path, categorical=categorical)

            ours()  # warm: the file in the page cache, GDAL's drivers loaded
            mine, baseline = [], []
            for _ in range(args.repeat):
                mine.append(timed(ours))
                baseline.append(timed(functools.partial(overview_read, path)))
            full = timed(functools.partial(full_read, path))
            with rasterio.open(path) as src:
                overviews = src.overviews(1)
            png = preview.render_thumbnail(path, categorical=categorical).png
            ours_ms, base_ms = statistics.median(mine), statistics.median(baseline)
            print(
                f"| {name} | {overviews or 'none'} | {ours_ms:.1f} | {base_ms:.1f} | "
                f"{ours_ms / base_ms:.2f} | {full:.0f} | {len(png) / 1024:.1f} KiB |"
            )
            rows.append(
                [
                    name,
                    str(overviews or "none"),
                    ours_ms,
                    base_ms,
                    ours_ms / base_ms,
                    full,
                    f"{len(png) / 1024:.1f} KiB",
                ]
            )
    write_result(
        "bench_previews",
        title="Thumbnails from COG overviews",
        goal="a thumbnail costs about one read of the COG's smallest overview, never a full read.",
        baseline="the overview read alone (rasterio, `out_shape` of the thumbnail)",
        columns=[
            "COG",
            "overviews",
            "ours (ms)",
            "overview read (ms)",
            "ratio",
            "full read (ms)",
            "PNG",
        ],
        rows=rows,
        ratio=statistics.median(float(row[4]) for row in rows),
        met=None,
    )


if __name__ == "__main__":
    main()
