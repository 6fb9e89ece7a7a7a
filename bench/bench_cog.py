"""Benchmark: our `to_cog` (raw profile) against GDAL's COG driver.

Three modes, run from the project root:

- `.venv/bin/python bench/bench_cog.py [--size 4000] [--repeat 3]`: ~4000x4000 rasters against
  GDAL's own command-line tools with the same creation options and threads (`make bench-tools`
  installs them: gdal-bin): `gdal_translate -of COG` and the legacy `gdalwarp -of COG`. Every
  conversion is a fresh process, as a user runs it (ours: `python -c` calling `to_cog`, imports
  included). Prints median seconds, the ratios, the output size ratio, and the peak RSS of our
  conversion.
- `.venv/bin/python bench/bench_cog.py --rss-gb 2.1`: peak RSS of `to_cog` on a generated
  float32 raster of that many GB (goal <= 1 GB), against `gdal_translate` on the same file.
- `.venv/bin/python bench/bench_cog.py --small [--repeat 30]`: the per-file overhead on rasters
  under 1 MB, against GDAL's COG driver called in the same process with the same creation
  options (`rasterio.shutil.copy(..., driver="COG")`), runs interleaved. Ours includes what
  `to_cog` always does: inspection, the VRT, validation and `describe_cog` (sha256, footprint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from results import write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bq_pipelines.lib import cog  # noqa: E402
from bq_pipelines_testkit.rasters import CUSTOM_LCC_WKT, RasterSpec, write_raster  # noqa: E402

log = logging.getLogger("bench_cog")

GDAL_TOOLS = ("gdal_translate", "gdalwarp")
MISSING_TOOLS = (
    "GDAL's command-line tools are missing ({missing}): the baselines of this benchmark. "
    "Run `make bench-tools` (as root: apt-get install -y gdal-bin)."
)
# What a user runs: a fresh interpreter that imports the library and converts one file.
OURS_SNIPPET = """
import json, sys, time
started = time.perf_counter()
from pathlib import Path
from bq_pipelines.lib import cog
src, dst, categorical = sys.argv[1], sys.argv[2], sys.argv[3] == "True"
cog.to_cog(cog.RasterInput(Path(src)), Path(dst), cog.CogSettings(categorical=categorical))
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"inner_seconds": time.perf_counter() - started, "max_rss_kib": rss}))
"""


def gdal_command(tool: str, case_dtype: str, categorical: bool) -> list[str]:
    """`tool` writing a COG with exactly our creation options (one thread, as ours)."""
    options = cog.cog_creation_options(case_dtype, cog.CogSettings(categorical=categorical))
    creation = [arg for key, value in options.items() for arg in ("-co", f"{key}={value}")]
    return [tool, "-q", "-of", "COG", *creation]


def require_gdal_tools() -> str:
    missing = [tool for tool in GDAL_TOOLS if shutil.which(tool) is None]
    if missing:
        raise SystemExit(MISSING_TOOLS.format(missing=", ".join(missing)))
    return subprocess.run(
        ["gdal_translate", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass(frozen=True)
class Case:
    """One benchmark input."""

    name: str
    path: Path
    categorical: bool
    dtype: str = "float32"


def write_continuous(path: Path, size: int) -> Path:
    """A smooth float32 field with noise (like a climate layer) and a NaN nodata band."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size].astype("float32") / size
    data = 10 * np.sin(6 * xx) * np.cos(4 * yy) + rng.normal(0, 0.5, (size, size))
    data = data.astype("float32")
    data[: size // 10, :] = np.nan  # like the sea of a land-only layer
    return _write(path, data, np.nan)


def write_categorical(path: Path, size: int) -> Path:
    """A patchy 11-class uint8 map with ragged class boundaries and a nodata band (0)."""
    rng = np.random.default_rng(0)
    cell = 40
    coarse = rng.integers(1, 12, size=(size // cell + 1, size // cell + 1)).astype("uint8")
    yy, xx = np.mgrid[0:size, 0:size]
    jitter = rng.integers(-15, 16, size=(size, size))
    rows = np.clip((yy + jitter) // cell, 0, size // cell)
    cols = np.clip((xx + jitter.T) // cell, 0, size // cell)
    data = coarse[rows, cols]
    data[: size // 10, :] = 0
    return _write(path, data, 0)


def _write(path: Path, data: np.ndarray, nodata: float) -> Path:
    height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=1, dtype=data.dtype,
        crs="EPSG:4326", transform=from_origin(-80.0, 60.0, 0.005, 0.005), nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data, 1)
    return path


def run_ours_in_subprocess(case: Case, dst: Path) -> tuple[float, int]:
    """(wall seconds of a fresh interpreter converting once, imports included; its peak RSS
    in MiB)."""
    dst.unlink(missing_ok=True)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", OURS_SNIPPET, str(case.path), str(dst), str(case.categorical)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, result["max_rss_kib"] // 1024


def start_up_seconds() -> float:
    """Wall seconds of a fresh interpreter that only imports `to_cog` (rasterio, numpy, and
    boto3, which rasterio imports whenever it is installed)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from bq_pipelines.lib import cog"], check=True, cwd=ROOT)
    return time.perf_counter() - started


def run_gdal(tool: str, case: Case, dst: Path) -> float:
    dst.unlink(missing_ok=True)
    start = time.perf_counter()
    command = gdal_command(tool, case.dtype, case.categorical)
    subprocess.run([*command, str(case.path), str(dst)], check=True)
    return time.perf_counter() - start


def bench(size: int, repeat: int) -> None:
    gdal_version = require_gdal_tools()
    log.info(
        "ours: rasterio %s (GDAL %s); baselines: %s, gdal_translate and gdalwarp -of COG with "
        "our creation options; every run a fresh process; %d cores (nproc), load average %.1f",
        rasterio.__version__, rasterio.__gdal_version__, gdal_version, os.cpu_count(),
        os.getloadavg()[0],
    )  # fmt: skip
    log.info(
        "| input | ours (s) | gdal_translate (s) | gdalwarp (s) | ours/translate | ours/warp "
        "| size ours/translate | peak RSS ours |"
    )
    log.info("|---|---|---|---|---|---|---|---|")
    rows: list[list[str | float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [
            Case("float32 continuous", write_continuous(work / "float.tif", size), False),
            Case("uint8 categorical", write_categorical(work / "cat.tif", size), True, "uint8"),
        ]
        for case in cases:
            ours, translate, warp, start_up = [], [], [], []
            for _ in range(repeat):  # interleaved: the machine's load hits every side alike
                start_up.append(start_up_seconds())
                ours.append(run_ours_in_subprocess(case, work / "ours.tif"))
                translate.append(run_gdal("gdal_translate", case, work / "translate.tif"))
                warp.append(run_gdal("gdalwarp", case, work / "warp.tif"))
            ours_s = statistics.median(s for s, _ in ours)
            translate_s, warp_s = statistics.median(translate), statistics.median(warp)
            sizes = [(work / name).stat().st_size for name in ("ours.tif", "translate.tif")]
            size_ratio = sizes[0] / sizes[1]
            log.info(
                "| %s %dx%d | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %d MiB |",
                case.name, size, size, ours_s, translate_s, warp_s, ours_s / translate_s,
                ours_s / warp_s, size_ratio, max(rss for _, rss in ours),
            )  # fmt: skip
            started = statistics.median(start_up)
            log.info(
                "  start-up of our process alone (interpreter, imports): %.2f s; ours without "
                "it / gdal_translate: %.2f",
                started, (ours_s - started) / translate_s,
            )  # fmt: skip
            rows.append(
                [
                    f"{case.name} {size}x{size}",
                    ours_s,
                    translate_s,
                    warp_s,
                    ours_s / translate_s,
                    ours_s / warp_s,
                    size_ratio,
                    f"{max(rss for _, rss in ours)} MiB",
                    started,
                ]
            )
    worst = max(float(row[4]) for row in rows)
    write_result(
        "bench_cog",
        title=f"COG conversion against GDAL's tools, {size} px, fresh processes",
        goal="<= 1.10x the time of GDAL's COG driver (gdal_translate), fresh processes.",
        baseline=f"{gdal_version}: gdal_translate / gdalwarp -of COG with our creation options",
        columns=[
            "input",
            "ours (s)",
            "gdal_translate (s)",
            "gdalwarp (s)",
            "ours/translate",
            "ours/warp",
            "size ours/translate",
            "peak RSS ours",
            "our start-up (s)",
        ],
        rows=rows,
        ratio=worst,
        met=worst <= 1.10,
        figures={"size": size, "repeat": repeat},
    )


def write_large(path: Path, gigabytes: float) -> Path:
    """A square float32 GeoTIFF of about `gigabytes` GB, written in strips (bounded memory)."""
    side = int(math.sqrt(gigabytes * 1e9 / 4))
    rows = 512
    with rasterio.open(
        path, "w", driver="GTiff", width=side, height=side, count=1, dtype="float32",
        crs="EPSG:4326", transform=from_origin(-180.0, 90.0, 360 / side, 180 / side),
        nodata=np.nan, tiled=True, blockxsize=512, blockysize=512,
    ) as dst:  # fmt: skip
        xx = np.linspace(0, 12, side, dtype="float32")
        rng = np.random.default_rng(2)
        for top in range(0, side, rows):
            height = min(rows, side - top)
            yy = np.linspace(top / side * 8, (top + height) / side * 8, height, dtype="float32")
            data = np.sin(xx)[None, :] * np.cos(yy)[:, None]
            data += rng.normal(0, 0.1, data.shape).astype("float32")
            dst.write(data.astype("float32"), 1, window=Window(0, top, side, height))
    return path


def bench_rss(gigabytes: float) -> None:
    """Peak RSS (and time) of to_cog on a raster of `gigabytes` GB, against gdal_translate."""
    gdal_version = require_gdal_tools()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = write_large(work / "large.tif", gigabytes)
        case = Case(f"float32 {source.stat().st_size / 2**30:.2f} GiB", source, False)
        with rasterio.open(source) as src:
            shape = f"{src.width}x{src.height}"
        seconds, rss = run_ours_in_subprocess(case, work / "ours.tif")
        (work / "ours.tif").unlink()
        translate_s = run_gdal("gdal_translate", case, work / "translate.tif")
        verdict = "met" if rss <= 1024 else f"missed by {rss / 1024:.2f}x"
        log.info(
            "%s (%s, tiled, uncompressed), %d cores, load average %.1f, baseline %s: ours %.1f s, "
            "gdal_translate %.1f s, ours/translate %.2f; peak RSS ours %d MiB (goal <= 1024 MiB: "
            "%s)",
            case.name, shape, os.cpu_count(), os.getloadavg()[0], gdal_version, seconds,
            translate_s, seconds / translate_s, rss, verdict,
        )  # fmt: skip
    write_result(
        "bench_cog-rss",
        title=f"Peak memory of a COG conversion on a {gigabytes:g} GB raster",
        goal="peak RSS <= 1 GB (1024 MiB).",
        baseline=f"{gdal_version}: gdal_translate on the same file (time only)",
        columns=["input", "ours (s)", "gdal_translate (s)", "ours/translate", "peak RSS ours"],
        rows=[[f"{case.name} {shape}", seconds, translate_s, seconds / translate_s, f"{rss} MiB"]],
        ratio=rss / 1024,
        met=rss <= 1024,
    )


SMALL_CASES = {
    f"{name} {size}x{size}{suffix}": (
        dataclasses.replace(spec, width=size, height=size, crs=crs),
        spec.categorical,
    )
    for name, spec in {
        "uint8 categorical": RasterSpec(dtype="uint8", nodata=0, categorical=True),
        "int16": RasterSpec(dtype="int16", nodata=-9999),
        "float32": RasterSpec(dtype="float32", nodata=float("nan")),
    }.items()
    for size in (64, 256, 500)
    for suffix, crs in (
        (" EPSG:4326", "EPSG:4326"),
        (" EPSG:32198", "EPSG:32198"),
        (" custom LCC", CUSTOM_LCC_WKT),
    )
    if suffix != " custom LCC" or size == 256
}


def _timed(call: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call. CPU time is less disturbed by other jobs on a shared
    machine; both are reported."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def _small_case_times(
    source: Path, work: Path, settings: cog.CogSettings, dtype: str, repeat: int
) -> dict[str, list[tuple[float, float]]]:
    options = cog.cog_creation_options(dtype, settings)
    ours_dst, gdal_dst = work / "ours.tif", work / "gdal.tif"
    times: dict[str, list[tuple[float, float]]] = {
        "gdal": [], "ours": [], "validate": [], "describe": []
    }  # fmt: skip

    def gdal_cog() -> None:
        rasterio.shutil.copy(str(source), str(gdal_dst), driver="COG", **options)

    def ours() -> None:
        cog.to_cog(cog.RasterInput(source), ours_dst, settings)

    for _ in range(repeat + 1):  # the first round warms caches and is dropped below
        times["gdal"].append(_timed(gdal_cog))
        times["ours"].append(_timed(ours))
        times["validate"].append(_timed(lambda: cog.validate_cog(ours_dst)))
        times["describe"].append(_timed(lambda: cog.describe_cog(ours_dst)))
    return {key: values[1:] for key, values in times.items()}


def bench_small(repeat: int) -> None:
    """Per-file time of to_cog against GDAL's COG driver in-process, on files under 1 MB."""
    logging.getLogger("bq_pipelines").setLevel(logging.WARNING)
    log.info(
        "ours: to_cog raw profile; baseline: rasterio.shutil.copy(driver='COG') with "
        "cog_creation_options; rasterio %s, GDAL %s; %d cores; medians of %d interleaved runs, "
        "milliseconds, wall (CPU)",
        rasterio.__version__, rasterio.__gdal_version__, os.cpu_count(), repeat,
    )  # fmt: skip
    log.info("| input | file | gdal COG | ours | ours/gdal | validate | describe |")
    log.info("|---|---|---|---|---|---|---|")
    ratios: list[float] = []
    rows: list[list[str | float]] = []
    with tempfile.TemporaryDirectory() as tmp, rasterio.Env(**cog.GDAL_CONFIG):
        work = Path(tmp)
        for name, (spec, categorical) in SMALL_CASES.items():
            source = write_raster(work / "in.tif", spec)
            settings = cog.CogSettings(categorical=categorical)
            times = _small_case_times(source, work, settings, spec.dtype, repeat)
            wall = {key: 1000 * statistics.median(w for w, _ in v) for key, v in times.items()}
            cpu = {key: 1000 * statistics.median(c for _, c in v) for key, v in times.items()}
            ratios.append(wall["ours"] / wall["gdal"])
            log.info(
                "| %s | %.0f kB | %.1f (%.1f) | %.1f (%.1f) | %.2f (%.2f) | %.1f | %.1f |",
                name, source.stat().st_size / 1000, wall["gdal"], cpu["gdal"], wall["ours"],
                cpu["ours"], ratios[-1], cpu["ours"] / cpu["gdal"], wall["validate"],
                wall["describe"],
            )  # fmt: skip
            rows.append(
                [
                    name,
                    f"{source.stat().st_size / 1000:.0f} kB",
                    wall["gdal"],
                    wall["ours"],
                    ratios[-1],
                    cpu["ours"] / cpu["gdal"],
                    wall["validate"],
                    wall["describe"],
                ]
            )
    log.info("median ratio ours/gdal (wall): %.2f", statistics.median(ratios))
    write_result(
        "bench_cog-small",
        title="COG conversion of small rasters: per-file overhead against GDAL's COG driver",
        goal="<= 1.5x GDAL's COG driver in-process on files under 1 MB (median, wall).",
        baseline=f"rasterio.shutil.copy(driver='COG'), GDAL {rasterio.__gdal_version__}",
        columns=[
            "input",
            "file",
            "gdal COG (ms)",
            "ours (ms)",
            "ours/gdal (wall)",
            "ours/gdal (CPU)",
            "validate (ms)",
            "describe (ms)",
        ],
        rows=rows,
        ratio=statistics.median(ratios),
        met=statistics.median(ratios) <= 1.5,
        figures={"repeat": repeat},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=None, help="3 (large), 30 (--small)")
    parser.add_argument("--small", action="store_true", help="per-file overhead, files < 1 MB")
    parser.add_argument("--rss-gb", type=float, help="peak RSS on a raster of this many GB")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.small:
        bench_small(args.repeat or 30)
    elif args.rss_gb:
        bench_rss(args.rss_gb)
    else:
        bench(args.size, args.repeat or 3)


if __name__ == "__main__":
    main()
