"""Benchmark: our `to_cog` (raw profile) against GDAL's COG driver.

Two modes, run from the project root:

- `.venv/bin/python bench/bench_cog.py [--size 4000] [--repeat 3]`: ~4000x4000 rasters against
  the `gdal_translate -of COG` CLI (`apt-get install -y -qq gdal-bin`). Prints median seconds,
  the ratio ours/gdal, the output size ratio, and the peak RSS of our conversion (measured in a
  fresh subprocess per run, so one run's memory does not hide another's).
- `.venv/bin/python bench/bench_cog.py --small [--repeat 30]`: the per-file overhead on rasters
  under 1 MB, against GDAL's COG driver called in the same process with the same creation
  options (`rasterio.shutil.copy(..., driver="COG")`), runs interleaved. Ours includes what
  `to_cog` always does: inspection, the VRT, validation and `describe_cog` (sha256, footprint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bq_pipelines.lib import cog  # noqa: E402
from bq_pipelines_tests.rasters import CUSTOM_LCC_WKT, RasterSpec, write_raster  # noqa: E402

log = logging.getLogger("bench_cog")

GDAL_BASELINE = [
    "gdal_translate", "-q", "-of", "COG", "-co", "COMPRESS=DEFLATE", "-co", "PREDICTOR=YES",
    "-co", "BLOCKSIZE=512", "-co", "OVERVIEWS=AUTO",
]  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One benchmark input."""

    name: str
    path: Path
    categorical: bool


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
    """(seconds, peak RSS in MiB) of one to_cog call in a fresh interpreter (imports included)."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(case.path), str(dst), str(case.categorical)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["max_rss_kib"] // 1024


def run_gdal(case: Case, dst: Path) -> float:
    dst.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([*GDAL_BASELINE, str(case.path), str(dst)], check=True)
    return time.perf_counter() - start


def worker(src: str, dst: str, categorical: str) -> None:
    """Convert once and report elapsed seconds and ru_maxrss (KiB on Linux) as JSON."""
    start = time.perf_counter()
    cog.to_cog(
        cog.RasterInput(Path(src)), Path(dst), cog.CogSettings(categorical=categorical == "True")
    )
    seconds = time.perf_counter() - start
    sys.stdout.write(json.dumps({"seconds": seconds, "max_rss_kib": peak_rss_kib()}) + "\n")


def peak_rss_kib() -> int:
    """Peak RSS of this process's own address space.

    getrusage's ru_maxrss survives fork+exec on Linux: a worker started by a parent holding the
    generated arrays reported the parent's 840 MiB. VmHWM is reset by exec, so prefer it.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def predictor_sizes(case: Case, work: Path) -> dict[int, int]:
    """Output bytes of a categorical raster with predictor 1 (ours) and 2 (GDAL's PREDICTOR=YES)."""
    sizes = {}
    original = cog.predictor_for
    try:
        for predictor in (1, 2):
            cog.predictor_for = lambda dtype, categorical, p=predictor: p  # type: ignore[misc]
            info = cog.to_cog(
                cog.RasterInput(case.path), work / f"pred{predictor}.tif",
                cog.CogSettings(categorical=True),
            )  # fmt: skip
            sizes[predictor] = info.size
    finally:
        cog.predictor_for = original
    return sizes


def bench(size: int, repeat: int) -> None:
    if shutil.which("gdal_translate") is None:
        raise SystemExit("gdal_translate not found: apt-get install -y -qq gdal-bin")
    gdal_version = subprocess.run(
        ["gdal_translate", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    log.info("ours: rasterio %s (GDAL %s); baseline: %s", rasterio.__version__,
             rasterio.__gdal_version__, gdal_version)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [
            Case("float32 continuous", write_continuous(work / "float.tif", size), False),
            Case("uint8 categorical", write_categorical(work / "cat.tif", size), True),
        ]
        for case in cases:
            ours = [run_ours_in_subprocess(case, work / "ours.tif") for _ in range(repeat)]
            gdal = [run_gdal(case, work / "gdal.tif") for _ in range(repeat)]
            ours_s = statistics.median(s for s, _ in ours)
            gdal_s = statistics.median(gdal)
            ours_size = (work / "ours.tif").stat().st_size
            gdal_size = (work / "gdal.tif").stat().st_size
            log.info(
                "%s %dx%d: ours %.2f s, gdal %.2f s, time ours/gdal %.2f, "
                "size ours %.1f MB / gdal %.1f MB = %.3f, peak RSS ours %d MiB",
                case.name, size, size, ours_s, gdal_s, ours_s / gdal_s, ours_size / 1e6,
                gdal_size / 1e6, ours_size / gdal_size, max(rss for _, rss in ours),
            )  # fmt: skip
        sizes = predictor_sizes(cases[1], work)
        log.info(
            "categorical predictor: none %.2f MB, horizontal (2) %.2f MB (+%.1f%%)",
            sizes[1] / 1e6, sizes[2] / 1e6, 100 * (sizes[2] / sizes[1] - 1),
        )  # fmt: skip


SMALL_CASES = {
    f"{name} {size}x{size}{suffix}": (
        RasterSpec(**{**spec, "width": size, "height": size, "crs": crs}),
        spec.get("categorical", False),
    )
    for name, spec in {
        "uint8 categorical": {"dtype": "uint8", "nodata": 0, "categorical": True},
        "int16": {"dtype": "int16", "nodata": -9999},
        "float32": {"dtype": "float32", "nodata": float("nan")},
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
    with tempfile.TemporaryDirectory() as tmp, rasterio.Env(**cog._GDAL_CONFIG):
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
    log.info("median ratio ours/gdal (wall): %.2f", statistics.median(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=None, help="3 (large), 30 (--small)")
    parser.add_argument("--small", action="store_true", help="per-file overhead, files < 1 MB")
    parser.add_argument("--worker", nargs=3, metavar=("SRC", "DST", "CATEGORICAL"))
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.small:
        bench_small(args.repeat or 30)
    else:
        bench(args.size, args.repeat or 3)


if __name__ == "__main__":
    main()
