"""Benchmark: items produced per second from one EBV cube, one worker against all cores.

Run from the project root: `.venv/bin/python bench/bench_items.py [--species 256] [--years 9]
[--width 720] [--height 360] [--no-baseline] [--compression zstd]`.

Writes an EBV-shaped NetCDF cube (`/scenario_1/metric_1/ebv_cube(entity, time, lat, lon)`,
float32, 720x360 like global-mammals' 0.5° grid, 5,090 species x 9 years = 45,810 bands,
chunked one band a chunk and deflated like EBV cubes; only the bands read are written, the others
cost no disk) and produces one partition of it (one year, one item per species: band reading,
COG, validation, sha256, STAC item, schema validation, upload to a local object store, static
catalog) with `run_items`, with `item_workers=1` then with one worker per CPU, each on a fresh
store and catalog. Baseline, in the same run and process: the previous path, one item after the
other (`band_extractor` copies the band to a staging GeoTIFF, `to_cog` converts it through a
VRT, `build_item` reads the COG back for its statistics, footprint and projection), with the
same validation, upload and catalog.
The from-memory runs use the COG settings global-mammals declares (`--compression` overrides
them); the baseline keeps DEFLATE, as before.
Prints the time to open the cube (paid once per partition; with the band facts cache, the facts
are read once per scenario and found in the cache by the other partitions), each path's items
per second after it (until every item is stored; the static catalog's publication apart), the
ratios, the CPU time per item of all processes, and the extrapolation to global-mammals' 229,050
items (45 partitions of 5,090: 45 openings + 45 x 5,090 items), from the wall time and from the
CPU time spread over two idle cores, against the goal of one hour end to end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import netCDF4
import numpy as np
import pystac
from rasterio.crs import CRS
from results import write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bq_pipelines.datasets.loading import load_declarations  # noqa: E402
from bq_pipelines.lib import cog, stac  # noqa: E402
from bq_pipelines.lib.catalog import StaticCatalogPublisher  # noqa: E402
from bq_pipelines.lib.cog import CogSettings  # noqa: E402
from bq_pipelines.lib.pipeline import (  # noqa: E402
    ItemPlan,
    Services,
    SourceRef,
    Step,
    item_workers,
    run_items,
)
from bq_pipelines.lib.storage import LocalObjectStore, ObjectOwner, object_key  # noqa: E402

GLOBAL_MAMMALS_ITEMS = 229_050
PARTITIONS, ITEMS_PER_PARTITION = 45, 5090
SCENARIOS = 5  # cube variables: with the band facts cache, each is read once
GOAL_SECONDS = 3600
SUBDATASET = "/scenario_1/metric_1/ebv_cube"


def write_cube(path: Path, species: int, years: int, written: int, height: int, width: int) -> None:
    """The cube's full shape; the first `written` species hold values, the rest is fill."""
    with netCDF4.Dataset(path, "w") as ds:
        for name, size in (("lat", height), ("lon", width), ("entity", species), ("time", years)):
            ds.createDimension(name, size)
        crs = ds.createVariable("crs", "i4")
        crs.grid_mapping_name = "latitude_longitude"
        crs.spatial_ref = CRS.from_epsg(4326).to_wkt()
        crs.GeoTransform = f"-180 {360 / width} 0 90 0 {-180 / height}"
        group = ds.createGroup("scenario_1").createGroup("metric_1")
        cube = group.createVariable(
            "ebv_cube",
            "f4",
            ("entity", "time", "lat", "lon"),
            fill_value=-3.4e38,
            zlib=True,
            complevel=4,
            chunksizes=(1, 1, height, width),
        )
        cube.grid_mapping = "/crs"
        yy, xx = np.mgrid[0:height, 0:width]
        field = np.sin(xx / 40.0) * np.cos(yy / 30.0)  # smooth, like a habitat map
        for k in range(written):  # one species at a time: bounded memory
            years_of = np.arange(1, years + 1)[:, None, None]
            cube[k] = (k * 100 + years_of + field).astype("float32")


def plans(
    cube: Path, species: int, years: int, settings: CogSettings, year: int = 1
) -> list[ItemPlan]:
    """One partition: species k reads band year + (k - 1) x years (global-mammals' layout)."""
    return [
        ItemPlan(
            collection_id="bench-mammals",
            item_id=f"scenario1_{year}_{k:04d}",
            folder="bench-mammals",
            file_name=f"scenario1_{year}_{k:04d}.tif",
            sources=(SourceRef(str(cube), SUBDATASET, (year + (k - 1) * years,)),),
            cog=settings,
            datetime=datetime(2015, 1, 1, tzinfo=UTC),
            properties={"scenario": 1, "year": 2015, "species": k},
            title=f"Species {k}",
        )
        for k in range(1, species + 1)
    ]


def collection() -> pystac.Collection:
    extent = pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
        pystac.TemporalExtent.from_dict({"interval": [[None, None]]}),
    )
    return pystac.Collection("bench-mammals", "EBV cube species", extent)


def produce(
    cube: Path,
    work: Path,
    species: int,
    years: int,
    workers: int,
    facts_cache: Path,
    settings: CogSettings,
) -> tuple[float, float]:
    """Seconds to produce (convert, describe, store) one partition's items with `workers`
    processes, then to publish them in the static catalog."""
    services = Services(
        store=LocalObjectStore(work / "objects"),
        publisher=StaticCatalogPublisher(work / "catalog"),
        work_dir=work / "work",
        item_workers=workers,
        band_facts_cache=facts_cache,
    )
    started = time.perf_counter()
    publishing: list[float] = []

    def on_step(step: Step, detail: str) -> None:
        if step == Step.PUBLISH:
            publishing.append(time.perf_counter())

    result = run_items(
        plans(cube, species, years, settings),
        services,
        "partition",
        on_step,
        collection=collection(),
    )
    elapsed = time.perf_counter() - started
    assert len(result.items) == species
    return publishing[0] - started, elapsed - (publishing[0] - started)


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the item workers)."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def produce_previous_path(
    cube: Path, work: Path, species: int, years: int, settings: CogSettings
) -> tuple[float, float]:
    """Seconds to produce and publish one partition the previous way, one item after the
    other: band copied to a staging GeoTIFF, converted through a VRT, item read back from the
    COG; the same checks, upload and catalog as `run_items`."""
    store = LocalObjectStore(work / "objects")
    publisher = StaticCatalogPublisher(work / "catalog")
    staging = work / "work"
    staging.mkdir(parents=True)
    started = time.perf_counter()
    items = []
    source = cog.RasterInput(cube, SUBDATASET)
    with cog.band_extractor(source, CogSettings(), staging) as extract:
        for plan in plans(cube, species, years, settings):
            band = extract(plan.sources[0].bands[0])  # type: ignore[index]
            info = cog.to_cog(band, staging / plan.file_name, plan.cog)
            band.path.unlink()
            key = object_key("io", plan.folder, plan.file_name)
            item = stac.build_item(
                info.path,
                item_id=plan.item_id,
                collection_id=plan.collection_id,
                datetime_=plan.datetime,
                properties=plan.properties,
                asset=stac.ItemAssetSpec(href=store.href(key), key=plan.item_id, title=plan.title),
                file_size=info.size,
                file_sha256=info.sha256,
            )
            stac.validate(item)
            assert stac.nodata_only(item, info.path) is None
            owner = ObjectOwner(plan.collection_id, plan.item_id)
            store.put_file(info.path, key, sha256=info.sha256, owner=owner)
            info.path.unlink()
            items.append(item)
    stored = time.perf_counter()
    publisher.ensure_collection(collection())
    publisher.upsert_items(items)
    elapsed = time.perf_counter() - started
    return stored - started, elapsed - (stored - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--species", type=int, default=256, help="items of the partition")
    parser.add_argument("--years", type=int, default=9, help="time steps of the cube")
    parser.add_argument("--cube-species", type=int, default=5090, help="entities of the cube")
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the previous path (the baseline)"
    )
    parser.add_argument(
        "--compression",
        choices=["deflate", "zstd"],
        default=declared_settings().compression,
        help="of the from-memory runs (default: what global-mammals declares); the baseline is "
        "the previous path with DEFLATE, as before",
    )
    args = parser.parse_args()
    settings = dataclasses.replace(declared_settings(), compression=args.compression)
    cores = item_workers(None)
    with tempfile.TemporaryDirectory(prefix="bench-items-") as tmp:
        cube = Path(tmp) / "cube.nc"
        write_cube(cube, args.cube_species, args.years, args.species, args.height, args.width)
        print(
            f"EBV cube {args.width}x{args.height} float32, {args.cube_species} species x "
            f"{args.years} years, {args.species} species written "
            f"({cube.stat().st_size / 1e6:.0f} MB); one partition of "
            f"{args.species} items; {cores} cores usable (os.sched_getaffinity), "
            f"os.cpu_count() {os.cpu_count()}, load average {load()}"
        )
        started, started_cpu = time.perf_counter(), cpu_seconds()
        cog.band_facts(cog.RasterInput(cube, SUBDATASET), CogSettings())
        opening, opening_cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
        facts_cache = Path(tmp) / "band-facts"
        cog.band_facts(cog.RasterInput(cube, SUBDATASET), CogSettings(), cache=facts_cache)
        started, started_cpu = time.perf_counter(), cpu_seconds()
        cog.band_facts(cog.RasterInput(cube, SUBDATASET), CogSettings(), cache=facts_cache)
        warm, warm_cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
        print(
            f"opening the cube and reading what each of its bands says (previously once per "
            f"partition): {opening:.1f} s ({opening_cpu:.1f} s CPU); with the facts cached "
            f"(from memory runs below; the facts are read once per scenario): {warm:.1f} s "
            f"({warm_cpu:.1f} s CPU)"
        )
        print(
            "| path | workers | seconds to produce | ms / item (opening excluded) | items / s "
            "| ratio to baseline | CPU ms / item (all processes, publication included) "
            "| 229,050 items (45 partitions) | 229,050 items from CPU time on 2 idle cores "
            "| static catalog publication (s) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        deflate = dataclasses.replace(settings, compression="deflate")
        runs: list[tuple[str, int, CogSettings]] = (
            [] if args.no_baseline else [("previous (baseline), deflate", 1, deflate)]
        )
        runs += [
            (f"from memory, {settings.compression}", workers, settings)
            for workers in dict.fromkeys((1, cores))
        ]
        if settings.compression != "deflate":
            runs.append(("from memory, deflate", cores, deflate))
        rates: dict[tuple[str, int], float] = {}
        totals: dict[tuple[str, int], float] = {}
        rows: list[list[str | float]] = []
        for path, workers, run_settings in runs:
            work = Path(tmp) / f"{path.replace(' ', '').replace(',', '-')}-w{workers}"
            before = cpu_seconds()
            previous = path.startswith("previous")
            if previous:
                seconds, publication = produce_previous_path(
                    cube, work, args.species, args.years, run_settings
                )
            else:
                seconds, publication = produce(
                    cube, work, args.species, args.years, workers, facts_cache, run_settings
                )
            # The opening is paid by the parent (or the one process) in every run.
            open_s, open_cpu = (opening, opening_cpu) if previous else (warm, warm_cpu)
            cpu_per_item = max(0.0, cpu_seconds() - before - open_cpu) / args.species
            run = (path, workers)
            rates[run] = args.species / max(1e-9, seconds - open_s)
            # 45 openings: each reads the facts, or (cached) 5 do and 40 find them.
            openings = (
                PARTITIONS * opening
                if previous
                else SCENARIOS * opening + (PARTITIONS - SCENARIOS) * warm
            )
            openings_cpu = (
                PARTITIONS * opening_cpu
                if previous
                else SCENARIOS * opening_cpu + (PARTITIONS - SCENARIOS) * warm_cpu
            )
            totals[run] = openings + PARTITIONS * ITEMS_PER_PARTITION / rates[run]
            # What an idle machine would take: every process's CPU spread over the 2 cores.
            on_idle_cores = openings_cpu + PARTITIONS * ITEMS_PER_PARTITION * cpu_per_item / 2
            baseline = rates[runs[0][:2]]
            print(
                f"| {path} | {workers} | {seconds:.1f} | {1000 / rates[run]:.1f} | "
                f"{rates[run]:.2f} | {rates[run] / baseline:.2f} | {1000 * cpu_per_item:.1f} | "
                f"{totals[run] / 3600:.2f} h | {on_idle_cores / 3600:.2f} h | {publication:.1f} |",
                flush=True,
            )
            rows.append(
                [
                    path,
                    workers,
                    seconds,
                    1000 / rates[run],
                    rates[run],
                    rates[run] / baseline,
                    1000 * cpu_per_item,
                    totals[run] / 3600,
                    on_idle_cores / 3600,
                    publication,
                ]
            )
        best = min(totals.values())
        verdict = "met" if best <= GOAL_SECONDS else f"missed by {best / GOAL_SECONDS:.2f}x"
        print(
            f"global-mammals ({GLOBAL_MAMMALS_ITEMS:,} items): {best / 60:.0f} min of item "
            f"production (the cube's band read, COG, validation, sha256, item, schema check, "
            f"object stored) on {cores} cores (goal <= 60 min end to end: {verdict}). The "
            "publication comes on top: into pgstac, bench_publish.py measures it for the same "
            "229,050 items (the static catalog used here writes a file per item, a local "
            f"stand-in). Load average at the end: {load()}"
        )
    write_result(
        "bench_items",
        title=f"Items from an EBV cube (global-mammals shaped), {args.species} items",
        goal="global-mammals (229,050 items) produced in <= 1 hour end to end on 2 cores.",
        baseline="the previous path (GDAL reads the cube per item, DEFLATE), one worker",
        columns=[
            "path",
            "workers",
            "seconds to produce",
            "ms / item",
            "items / s",
            "ratio to baseline",
            "CPU ms / item",
            "229,050 items (h)",
            "on 2 idle cores (h)",
            "static publication (s)",
        ],
        rows=rows,
        ratio=best / GOAL_SECONDS,
        met=best <= GOAL_SECONDS,
        figures={"opening_s": opening, "opening_cached_s": warm, "best_total_s": best},
    )


def declared_settings() -> CogSettings:
    """The COG settings global-mammals declares (bq_pipelines/defs/global-mammals)."""
    [declaration] = [d for d in load_declarations() if d.id == "global-mammals"]
    return declaration.cog.settings()


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
