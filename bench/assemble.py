"""Builds bench/RESULTS.md from what the benches wrote (bench/results/*.json), the figures
carried over from before (bench/results/carried/*.json, labelled so) and the hand-written
analysis (bench/NOTES.md). Run from the project root: `.venv/bin/python bench/assemble.py`
(`make bench` runs it after the benches); `--check` fails when RESULTS.md is out of date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from results import BENCH_DIR, CARRIED_DIR, RESULTS_DIR, render, verdict

RESULTS_MD = BENCH_DIR / "RESULTS.md"
NOTES_MD = BENCH_DIR / "NOTES.md"
# Sections in reading order: each lists the result names (file stems) it shows.
SECTIONS: list[tuple[str, list[str]]] = [
    ("COG conversion", ["bench_cog", "bench_cog-small", "bench_cog-rss"]),
    ("Items from an EBV cube", ["bench_items"]),
    ("Dagster overhead and backfill batching", ["bench_backfill"]),
    ("Command line against in-process runs", ["bench_cli"]),
    ("STAC validation", ["bench_validation"]),
    ("Catalog publishing (pgstac bulk loading)", ["bench_publish"]),
    ("Ingestion API", ["bench_api", "bench_api-process-during", "bench_api-process-after"]),
    ("Previews (thumbnails)", ["bench_previews"]),
]
HEADER = """# Benchmark results

Assembled by `bench/assemble.py` from the results each benchmark wrote when it ran
(`bench/results/<name>.json`, with its markdown beside it): do not edit by hand. `make bench`
runs the benchmarks, then assembles. Each entry gives the command, the date, the core count and
the load average of its run. An entry "carried over from <date>, not re-run" holds figures
published before the benches wrote their own results, copied cell for cell from the earlier
RESULTS.md: that command has not been run again since (often a full-size run that takes too
long on a shared machine); the fresh run beside it, when there is one, may use smaller sizes,
as its command says. Why a goal is met or missed, and the earlier measurements, are in the
hand-written notes at the end (`bench/NOTES.md`).
"""


def load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def entries(name: str) -> list[dict[str, Any]]:
    """The fresh run of a result, then its carried-over figures, whichever exist."""
    found = (load(RESULTS_DIR, name), load(CARRIED_DIR, name))
    return [record for record in found if record is not None]


def summary_row(record: dict[str, Any]) -> str:
    when = (
        f"{record['carried_over_from']} (carried over)"
        if record.get("carried_over_from")
        else record["date"]
    )
    load = "/".join(f"{v:.1f}" for v in record["load_average"]) if record["load_average"] else "-"
    ratio = "-" if record["ratio"] is None else f"{record['ratio']:g}"
    return f"| {record['title']} | {when} | {load} | {ratio} | {verdict(record)} |"


def demoted(notes: str) -> str:
    """The notes' headings one level down: a section of the results."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", notes, flags=re.MULTILINE)


def known_names() -> set[str]:
    return {name for _, names in SECTIONS for name in names}


def unlisted() -> list[str]:
    """Results a bench wrote that no section lists yet: shown last rather than lost."""
    stems = {p.stem for folder in (RESULTS_DIR, CARRIED_DIR) for p in folder.glob("*.json")}
    return sorted(stems - known_names())


def build() -> str:
    sections = [*SECTIONS, *([("Other results", unlisted())] if unlisted() else [])]
    records = [(title, entries(name)) for title, names in sections for name in names]
    parts = [HEADER, "## Summary", ""]
    parts += [
        "| result | run | load (1/5/15 min) | ratio | verdict |",
        "|---|---|---|---|---|",
    ]
    parts += [summary_row(record) for _, found in records for record in found]
    for title, names in sections:
        parts += ["", f"## {title}", ""]
        found = [record for name in names for record in entries(name)]
        if not found:
            parts.append("No result written yet: run the benchmark.")
        parts += [render(record, level=3) for record in found]
    parts += ["", demoted(NOTES_MD.read_text(encoding="utf-8"))]
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if RESULTS.md is stale")
    args = parser.parse_args()
    text = build()
    if args.check:
        current = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.exists() else ""
        if current != text:
            print("bench/RESULTS.md is out of date: run bench/assemble.py", file=sys.stderr)
            return 1
        return 0
    RESULTS_MD.write_text(text, encoding="utf-8")
    print(f"written: {RESULTS_MD.relative_to(BENCH_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
