"""Benchmark: Dagster's overhead per partition, batch size 1 and 24, against a plain loop.

Run from the project root: `.venv/bin/python bench/bench_backfill.py [--partitions 120]
[--batch-sizes 1,24] [--size 16] [--storage sqlite,postgres,pooled] [--rounds 1]`.

A chelsa-monthly-like dataset (`bq_pipelines_testkit/backfill_location.py`: monthly x variable,
one variable here) reads `--partitions` generated float32 EPSG:4326 rasters from a local HTTP
server standing in for the CHELSA host, and is materialized through our CLI's `materialize` path
(one `execute_in_process` run per batch of partitions, the collection in the last) on a fresh
Dagster instance and a fresh static catalog / local object store per batch size, so nothing is
skipped. The instance's storage (`--storage`): `sqlite` (`DagsterInstance.local_temp`, the local
`make dev` instance), `postgres` (dagster-postgres as it comes, on `--postgres-url`, a database
`--postgres-db` dropped and created again for each run) or `pooled` (the same database through
`bq_pipelines.runtime.instance_storage.PooledPostgresStorage`: the production configuration,
deploy/dagster.yaml). The baseline: a plain Python loop over the same library calls for each
partition (plan, probe the sources, fingerprint, `run_items`: fetch, COG, item, upload,
publish) and the collection once at the end, on its own fresh catalog and store, without
Dagster, measured right before each Dagster run (after one unmeasured warm-up loop), so that
each ratio compares two runs under the same load; `--rounds` repeats every configuration and
prints the median ratio. Prints wall seconds, event-log rows per partition, seconds per partition
and the ratio to the plain loop (goal for a batched run: <= 1.3x).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from results import write_result  # noqa: E402

from bq_pipelines.datasets.plans import collection_for, plan_partition  # noqa: E402
from bq_pipelines.lib.pipeline import fingerprint, probe_sources, run_items  # noqa: E402
from bq_pipelines.orchestration.resources import (  # noqa: E402
    catalog_for,
    object_store_for,
    services_for,
    sources_for,
)
from bq_pipelines.runtime.event_batching import (  # noqa: E402
    EVENT_BATCH_SIZE,
    EVENT_BATCH_SIZE_ENV,
)
from bq_pipelines.runtime.launch import materialize  # noqa: E402
from bq_pipelines.settings import Settings  # noqa: E402
from bq_pipelines_testkit import backfill_location as location  # noqa: E402
from bq_pipelines_testkit.http_host import LocalHttpHost  # noqa: E402
from bq_pipelines_testkit.rasters import RasterSpec, write_raster  # noqa: E402
from bq_pipelines_testkit.runs import dataset_definitions  # noqa: E402

VARIABLE = "tas"
PRODUCTION = "pooled"  # deploy/dagster.yaml
STORAGES = ("sqlite", "postgres", "pooled")


def serve(host: LocalHttpHost, months: int, size: int) -> None:
    for index in range(months):
        spec = RasterSpec(width=size, height=size, resolution=8.0 / size, seed=index)
        write_raster(host.root / "chelsa" / location.source_path(index, VARIABLE), spec)


def plain_loop(host: LocalHttpHost, months: int, work: Path) -> float:
    """Seconds for the same partitions through the library alone (no Dagster)."""
    env = {
        "BQ_HOME": str(work / "bq"),
        "BQ_SOURCE_BASE_URLS": f"{location.CHELSA_HOST}={host.url('chelsa')}",
    }
    settings = Settings.from_env(env)
    declaration = location.chelsa_like("bench-plain", months, 1)
    defs = dataset_definitions(declaration, settings)
    sources = sources_for(settings)
    services = services_for(object_store_for(settings), catalog_for(settings), sources)
    locations = sources.locations()
    partitions_def = defs.resolve_job_def(f"{declaration.id.replace('-', '_')}_job").partitions_def
    assert isinstance(partitions_def, dg.MultiPartitionsDefinition)
    keys = [location.partition_key(i, VARIABLE) for i in range(months)]
    started = time.perf_counter()
    items: list[dict[str, Any]] = []
    for key in keys:
        dimensions = partitions_def.get_partition_key_from_str(key).keys_by_dimension
        plans = plan_partition(declaration, dimensions, locations)
        urls = list(dict.fromkeys(s.url for p in plans for s in p.sources))
        fingerprint(plans, [f.token() for f in probe_sources(urls, services)])
        result = run_items(plans, services, key, collection=collection_for(declaration, []))
        items.extend(r.item for r in result.items)
    services.publisher.upsert_collection(collection_for(declaration, items))
    return time.perf_counter() - started


def fresh_postgres_database(server_url: str, database: str) -> str:
    """Drop and create `database` on the PostgreSQL server; its SQLAlchemy URL."""
    # A pooled instance of the previous run may still hold its connection: dropped WITH (FORCE).
    drop_database(server_url, database)
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return f"{server_url.replace('postgresql://', 'postgresql+psycopg2://')}/{database}"


def instance_overrides(storage: str, args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {"telemetry": {"enabled": False}}
    if storage == "postgres":
        url = fresh_postgres_database(args.postgres_url, args.postgres_db)
        overrides["storage"] = {"postgres": {"postgres_url": url}}
    elif storage == "pooled":  # as deploy/dagster.yaml configures it
        url = fresh_postgres_database(args.postgres_url, args.postgres_db)
        overrides["storage"] = {
            "custom": {
                "module": "bq_pipelines.runtime.instance_storage",
                "class": "PooledPostgresStorage",
                "config": {"postgres_url": url},
            }
        }
    return overrides


def events_by_type(instance: dg.DagsterInstance) -> collections.Counter[str]:
    """Event-log rows of every run of the instance, by Dagster event type (`LOG`: log lines)."""
    counts: collections.Counter[str] = collections.Counter()
    for run in instance.get_runs():
        for record in instance.get_records_for_run(run.run_id, limit=1_000_000).records:
            event_type = record.event_log_entry.dagster_event_type
            counts[event_type.value if event_type is not None else "LOG"] += 1
    return counts


def run_once(
    host: LocalHttpHost,
    months: int,
    batch_size: int,
    work: Path,
    overrides: dict[str, Any],
) -> tuple[float, int, collections.Counter[str]]:
    """Seconds to materialize every partition with `batch_size`, the number of runs and their
    events by type."""
    env = {
        "BQ_HOME": str(work / "bq"),
        "BQ_SOURCE_BASE_URLS": f"{location.CHELSA_HOST}={host.url('chelsa')}",
    }
    settings = Settings.from_env(env)
    declaration = location.chelsa_like(f"bench-b{batch_size}", months, batch_size)
    defs = dataset_definitions(declaration, settings)
    keys = [location.partition_key(i, VARIABLE) for i in range(months)]
    (work / "dagster").mkdir(parents=True)
    with dg.DagsterInstance.local_temp(str(work / "dagster"), overrides=overrides) as instance:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ok = materialize(declaration, defs, keys, instance).ok
        elapsed = time.perf_counter() - started
        runs = len(instance.get_runs())
        events = events_by_type(instance)
    if not ok:
        raise SystemExit(f"batch size {batch_size}: a run failed")
    return elapsed, runs, events


def load() -> str:
    return f"load average {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=120)
    parser.add_argument("--batch-sizes", default="1,24")
    parser.add_argument("--size", type=int, default=16, help="raster width and height (px)")
    parser.add_argument(
        "--storage",
        default=",".join(STORAGES),
        help="instance storage(s): sqlite, postgres (dagster-postgres as it comes: a connection "
        "per write), pooled (production: bq_pipelines.runtime.instance_storage)",
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--postgres-db", default="dagster_overhead_bench")
    parser.add_argument("--rounds", type=int, default=1, help="measurements per configuration")
    parser.add_argument("--verbose", action="store_true", help="events of each run by type")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    storages = args.storage.split(",")
    assert set(storages) <= set(STORAGES), storages
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        host = LocalHttpHost(Path(tmp) / "http_root")
        host.start()
        try:
            serve(host, args.partitions, args.size)
            plain_loop(host, args.partitions, Path(tmp) / "warm-up")  # imports, GDAL drivers
            print(
                f"{args.partitions} partitions of {args.size}x{args.size} float32, in-process "
                f"runs; {os.cpu_count()} cores, {load()} at the start; "
                f"{EVENT_BATCH_SIZE_ENV}={os.environ.get(EVENT_BATCH_SIZE_ENV, EVENT_BATCH_SIZE)}"
            )
            print(
                "| round | storage | batch size | runs | events / partition | plain loop (s) "
                "| Dagster (s) | s / partition | ratio to the plain loop | load |"
            )
            print("|---|---|---|---|---|---|---|---|---|---|")
            ratios: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
            rows: list[list[str | float]] = []
            # Rounds alternate the configurations, so that a burst of load on the shared
            # machine does not fall on one of them only.
            for round_ in range(1, args.rounds + 1):
                for storage in storages:
                    for batch_size in sizes:
                        work = Path(tmp) / f"r{round_}-{storage}-b{batch_size}"
                        plain = plain_loop(host, args.partitions, work / "plain")
                        overrides = instance_overrides(storage, args)
                        elapsed, runs, events = run_once(
                            host, args.partitions, batch_size, work, overrides
                        )
                        assert runs == math.ceil(args.partitions / batch_size)  # + collection
                        ratios[(storage, batch_size)].append(elapsed / plain)
                        label = f"{storage} (production)" if storage == PRODUCTION else storage
                        print(
                            f"| {round_} | {label} | {batch_size} | {runs} "
                            f"| {events.total() / args.partitions:.1f} | {plain:.2f} "
                            f"| {elapsed:.2f} | {elapsed / args.partitions:.3f} "
                            f"| {elapsed / plain:.2f} | {load()} |",
                            flush=True,
                        )
                        rows.append(
                            [
                                round_,
                                label,
                                batch_size,
                                runs,
                                events.total() / args.partitions,
                                plain,
                                elapsed,
                                elapsed / args.partitions,
                                elapsed / plain,
                                os.getloadavg()[0],
                            ]
                        )
                        if args.verbose:
                            print(f"  events: {dict(events.most_common())}")
            for (storage, batch_size), values in ratios.items():
                label = f"{storage} (production)" if storage == PRODUCTION else storage
                print(
                    f"{label}, batch size {batch_size}: median ratio "
                    f"{statistics.median(values):.2f} over {len(values)} rounds "
                    f"(min {min(values):.2f}, max {max(values):.2f}); goal <= 1.3"
                )
            # The goal is the batched run on the storage production uses, when measured.
            judged = (PRODUCTION if PRODUCTION in storages else storages[0], max(sizes))
            judged_ratio = statistics.median(ratios[judged])
            write_result(
                "bench_backfill",
                title=f"Dagster overhead against a plain loop, {args.partitions} partitions",
                goal=f"a batched run <= 1.3x the plain loop (judged: {judged[0]}, batch size "
                f"{judged[1]}, median of {args.rounds} round(s)).",
                baseline="the same fetch, COG, item and publication in a plain Python loop",
                columns=[
                    "round",
                    "storage",
                    "batch size",
                    "runs",
                    "events / partition",
                    "plain loop (s)",
                    "Dagster (s)",
                    "s / partition",
                    "ratio",
                    "load (1 min)",
                ],
                rows=rows,
                ratio=judged_ratio,
                met=judged_ratio <= 1.3,
                figures={"median_ratios": {f"{k[0]}, batch {k[1]}": v for k, v in ratios.items()}},
            )
        finally:
            host.stop()
            if {"postgres", "pooled"} & set(storages):
                drop_database(args.postgres_url, args.postgres_db)


def drop_database(server_url: str, database: str) -> None:
    """The benchmark's Dagster database, gone once the figures are printed."""
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(database)))


if __name__ == "__main__":
    main()
