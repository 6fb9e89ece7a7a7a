"""Benchmark: batching partitions per run, batch size 1 against batch size 24.

Run from the project root: `.venv/bin/python bench/bench_backfill.py [--partitions 120]
[--batch-sizes 1,24] [--size 16]`.

A chelsa-monthly-like dataset (`bq_pipelines_tests/backfill_location.py`: monthly x variable,
one variable here) reads `--partitions` generated float32 EPSG:4326 rasters from a local HTTP
server standing in for the CHELSA host, and is materialized through our CLI's `materialize` path
(one `execute_in_process` run per batch of partitions, the collection in the last) on a fresh SQLite
Dagster instance and a fresh static catalog / local object store per batch size, so nothing is
skipped. Prints wall seconds, seconds per partition and the ratio to the first batch size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402

from bq_pipelines.launch import materialize  # noqa: E402
from bq_pipelines.settings import Settings  # noqa: E402
from bq_pipelines_tests import backfill_location as location  # noqa: E402
from bq_pipelines_tests.fixtures.http_server import LocalHttpHost  # noqa: E402
from bq_pipelines_tests.rasters import RasterSpec, write_raster  # noqa: E402
from bq_pipelines_tests.runs import dataset_definitions  # noqa: E402

VARIABLE = "tas"


def serve(host: LocalHttpHost, months: int, size: int) -> None:
    for index in range(months):
        spec = RasterSpec(width=size, height=size, resolution=8.0 / size, seed=index)
        write_raster(host.root / "chelsa" / location.source_path(index, VARIABLE), spec)


def run_once(host: LocalHttpHost, months: int, batch_size: int, work: Path) -> tuple[float, int]:
    """Seconds to materialize every partition with `batch_size`, and the number of runs."""
    env = {
        "BQ_HOME": str(work / "bq"),
        "BQ_SOURCE_BASE_URLS": f"{location.CHELSA_HOST}={host.url('chelsa')}",
    }
    settings = Settings.from_env(env)
    declaration = location.chelsa_like(f"bench-b{batch_size}", months, batch_size)
    defs = dataset_definitions(declaration, settings)
    keys = [location.partition_key(i, VARIABLE) for i in range(months)]
    (work / "dagster").mkdir(parents=True)
    with dg.DagsterInstance.local_temp(
        str(work / "dagster"), overrides={"telemetry": {"enabled": False}}
    ) as instance:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ok = materialize(declaration, defs, keys, instance).ok
        elapsed = time.perf_counter() - started
        runs = len(instance.get_runs())
    if not ok:
        raise SystemExit(f"batch size {batch_size}: a run failed")
    return elapsed, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=120)
    parser.add_argument("--batch-sizes", default="1,24")
    parser.add_argument("--size", type=int, default=16, help="raster width and height (px)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        host = LocalHttpHost(Path(tmp) / "http_root")
        host.start()
        try:
            serve(host, args.partitions, args.size)
            print(
                f"{args.partitions} partitions of {args.size}x{args.size} float32, "
                "in-process runs, SQLite instance"
            )
            print("| batch size | runs | total (s) | s / partition | ratio to first |")
            print("|---|---|---|---|---|")
            first = None
            for batch_size in sizes:
                elapsed, runs = run_once(
                    host, args.partitions, batch_size, Path(tmp) / f"b{batch_size}"
                )
                assert runs == math.ceil(args.partitions / batch_size)  # collection in the last
                per = elapsed / args.partitions
                first = first or per
                print(
                    f"| {batch_size} | {runs} | {elapsed:.1f} | {per:.3f} | {per / first:.2f} |",
                    flush=True,
                )
        finally:
            host.stop()


if __name__ == "__main__":
    main()
