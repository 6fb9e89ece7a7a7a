"""Benchmark: what a `bq-pipelines materialize` costs on top of the same work done in-process.

Run from the project root: `.venv/bin/python bench/bench_cli.py [--rounds 3]`.

On a fresh BQ_HOME (embedded defaults: local object store, static catalog, the SQLite instance
under `$BQ_HOME/dagster` the CLI uses when DAGSTER_HOME is unset), the demo rasters are written
and published once. Then, each round, the same unchanged demo partitions (3 partitions, all
skipped: a fingerprint and a stat per object) are materialized three ways:
- `in-process`: `launch.materialize` in this (warm) process, on the same instance: the baseline;
- `cli`: `bq-pipelines materialize demo` in a fresh process, as a user types it (runs executed
  in the CLI's process, recorded under `demo_job`);
- `cli --launch`: the same through the code location (a code server and a run process start,
  as the UI launches runs).
Prints the median seconds of each and what the CLI adds to the in-process run (goal: <= 10 s,
issue 19), with the core count and the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402
from results import write_result  # noqa: E402

from bq_pipelines.cli import main  # noqa: E402
from bq_pipelines.datasets.loading import builtin_declaration_path, load_declaration_file  # noqa: E402
from bq_pipelines.definitions import defs  # noqa: E402
from bq_pipelines.runtime.launch import InProcessLauncher, code_location_tags, materialize  # noqa: E402

CLI = Path(sys.executable).parent / "bq-pipelines"
GOAL_SECONDS = 10.0


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_cli(*args: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of the command (CPU: less disturbed by a loaded machine)."""
    started, cpu = time.perf_counter(), children_cpu_seconds()
    done = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "3 skipped" not in done.stdout:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, children_cpu_seconds() - cpu


def timed_in_process(instance: dg.DagsterInstance) -> tuple[float, float]:
    declaration = load_declaration_file(builtin_declaration_path("demo"))
    definitions = defs()
    keys = ["landcover", "elevation", "temperature"]
    started, cpu = time.perf_counter(), time.process_time()
    done = materialize(
        declaration,
        definitions,
        keys,
        instance,
        InProcessLauncher(definitions, instance, tags=code_location_tags()),
    )
    elapsed = time.perf_counter() - started
    if done.skipped != 3:
        raise SystemExit(f"in-process: {done.skipped} skipped, expected 3")
    return elapsed, time.process_time() - cpu


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BQ_", "DAGSTER_"))}
        env["BQ_HOME"] = home
        os.environ.clear()
        os.environ.update(env)
        load = os.getloadavg()[0]
        for command in (["demo-data"], ["materialize", "demo"]):
            if main(command) != 0:
                raise SystemExit(f"set-up: bq-pipelines {' '.join(command)} failed")
        instance = dg.DagsterInstance.get()  # the CLI set DAGSTER_HOME to $BQ_HOME/dagster
        env["DAGSTER_HOME"] = os.environ["DAGSTER_HOME"]
        timed_in_process(instance)  # warm this process as a user's shell never is
        figures: dict[str, list[tuple[float, float]]] = {
            "in-process": [],
            "cli": [],
            "cli --launch": [],
        }
        for _ in range(args.rounds):
            figures["in-process"].append(timed_in_process(instance))
            figures["cli"].append(timed_cli("materialize", "demo", env=env))
            figures["cli --launch"].append(timed_cli("materialize", "demo", "--launch", env=env))
        load = max(load, os.getloadavg()[0])
    medians = {name: statistics.median(w for w, _ in values) for name, values in figures.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in figures.items()}
    print(f"cores {os.cpu_count()}, load up to {load:.1f}, {args.rounds} rounds (medians)")
    for name, seconds in medians.items():
        added = seconds - medians["in-process"]
        print(f"{name:14} {seconds:6.2f} s   +{added:5.2f} s over in-process")
    added = medians["cli"] - medians["in-process"]
    verdict = "met" if added <= GOAL_SECONDS else "MISSED"
    print(f"goal: the CLI adds <= {GOAL_SECONDS:.0f} s to the in-process run: {verdict}")
    write_result(
        "bench_cli",
        title="CLI run against in-process run of the unchanged demo partitions",
        goal=f"a CLI run adds <= {GOAL_SECONDS:.0f} s to the same work in-process (issue 19).",
        baseline="`launch.materialize` in a warm process on the same instance",
        columns=[
            "run",
            "median (s)",
            "added over in-process (s)",
            "CPU (s)",
            "CPU added (s)",
            "rounds",
        ],
        rows=[
            [
                name,
                seconds,
                seconds - medians["in-process"],
                cpu[name],
                cpu[name] - cpu["in-process"],
                args.rounds,
            ]
            for name, seconds in medians.items()
        ],
        ratio=medians["cli"] / medians["in-process"],
        met=added <= GOAL_SECONDS,
        figures={"medians_s": medians, "cpu_s": cpu, "added_s": added, "samples_s": figures},
        load_max=load,
    )


if __name__ == "__main__":
    main_bench()
