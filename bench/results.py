"""What a benchmark run measured, written by the run: `bench/results/<name>.json` and the same as
a markdown fragment (`<name>.md`), which `bench/assemble.py` gathers into `bench/RESULTS.md`.

Each bench calls `write_result` once per table it measures, at its end. The record holds the
command as typed, the date, the core count and the load average, so a figure is never read
without the conditions it was measured under.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
# Figures measured before the benches wrote their own results, kept as they were published and
# labelled as such: a run that cannot be repeated in time is never replaced by invented numbers.
CARRIED_DIR = RESULTS_DIR / "carried"

Cell = str | int | float | None


def typed_command() -> str:
    """The command that started this run, as typed from the project root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(BENCH_DIR.parent))
    except ValueError:
        shown = str(script)
    return shlex.join([".venv/bin/python", shown, *sys.argv[1:]])


def write_result(
    name: str,
    *,
    title: str,
    goal: str,
    baseline: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    ratio: float | None,
    met: bool | None,
    figures: dict[str, Any] | None = None,
    load_max: float | None = None,
) -> Path:
    """Writes `results/<name>.json` and `results/<name>.md` for this run and prints the table.

    `ratio` is ours against the baseline as the goal states it; `met` is None when the run has
    no goal to meet (a measurement kept for the record)."""
    record: dict[str, Any] = {
        "name": name,
        "title": title,
        "command": typed_command(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        # 1, 5 and 15 minutes at the end of the run: the 5-minute figure spans most runs.
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "load_max": None if load_max is None else round(load_max, 2),
        "goal": goal,
        "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 3),
        "met": met,
        "columns": list(columns),
        "rows": [list(row) for row in rows],
        "figures": figures or {},
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    fragment = render(record)
    (RESULTS_DIR / f"{name}.md").write_text(fragment, encoding="utf-8")
    print(f"\n{fragment}\nwritten: {path.relative_to(BENCH_DIR.parent)}")
    return path


def verdict(record: dict[str, Any]) -> str:
    if record.get("verdict_text"):
        return str(record["verdict_text"])
    if record["met"] is None:
        return "no goal to meet (measured for the record)"
    return "**met**" if record["met"] else "**missed**"


def conditions(record: dict[str, Any]) -> str:
    """`2026-12-06 08:10 UTC, 2 cores, load average 3.1 / 2.5 / 1.9 (1/5/15 min)`."""
    if record.get("carried_over_from"):
        return f"{record['date']}, {record.get('conditions_text', '')}".rstrip()
    load = " / ".join(f"{value:.1f}" for value in record["load_average"])
    text = f"{record['date']}, {record['cores']} cores, load average {load} (1/5/15 min)"
    if record.get("load_max") is not None:
        text += f", up to {record['load_max']:.1f} during the run"
    return text + "."


def render(record: dict[str, Any], level: int = 4) -> str:
    """The record as markdown: its command, conditions, goal and verdict, then its table."""
    carried = record.get("carried_over_from")
    heading = f"{'#' * level} {record['title']}"
    if carried:
        heading += f" (carried over from {carried}, not re-run)"
    lines = [heading, "", f"```\n{record['command']}\n```", ""]
    if carried:
        lines += [
            f"Figures as bench/RESULTS.md published them before the benches wrote their own "
            f"results, copied cell for cell; not re-run since. Run: {conditions(record)}",
            "",
        ]
    else:
        lines += [f"Run: {conditions(record)}", ""]
    ratio = "" if record["ratio"] is None else f" Ratio: {record['ratio']:g}."
    lines += [
        f"Goal: {record['goal']} Baseline: {record['baseline']}.{ratio} "
        f"Verdict: {verdict(record)}.",
        "",
        markdown_table(record["columns"], record["rows"]),
    ]
    return "\n".join(lines) + "\n"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    def cell(value: Cell) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join([header, rule, *body])
