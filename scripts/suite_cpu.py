"""Where a test run's CPU goes. Runs a command (`make test` by default), reads every process of
the machine from /proc three times a second, and charges each process's CPU to a kind (run worker,
code server, daemon, CLI...) and to the test that started it: the PYTEST_CURRENT_TEST it
inherited from pytest, or through a code server, from the test that started that server.
At the end: the wall time, how busy the machine was (/proc/stat), CPU-s by kind and by test file.

`make test` is CPU-bound on two cores (its processes keep both ~95 % busy): its time is its CPU,
and this says which processes to make cheaper. `make test-cpu` runs it on `make test`.

    .venv/bin/python scripts/suite_cpu.py [--json FILE] [--top N] [-- COMMAND...]

A process living less than a sample apart (0.3 s) may be missed, and the CPU a process spends
after its last sample is not counted; pytest's own processes are one kind, not split by test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.3
TICKS = os.sysconf("SC_CLK_TCK")
TEST_VARIABLE = b"PYTEST_CURRENT_TEST="
# (what the command line contains, the kind): the first match wins.
KINDS = (
    ("multiprocessing.spawn", "run worker or step process (spawned)"),
    ("dagster api grpc", "code server"),
    ("dagster-daemon", "dagster-daemon"),
    ("dagster-webserver", "dagster-webserver"),
    ("bin/bq-pipelines", "bq-pipelines CLI"),
    ("-m bq_pipelines.ingestion", "ingestion API"),
    ("celery_worker", "Celery worker"),
    ("scripts/services.py", "test stack (scripts/services.py)"),
    ("exec(eval(sys.stdin", "pytest worker"),
    ("bin/pytest", "pytest"),
    ("postgres", "PostgreSQL"),
    ("moto", "moto (S3)"),
    ("uvicorn", "uvicorn (STAC API, tiler)"),
)


@dataclass
class Process:
    command: str
    kind: str
    test: str  # the test file, "" when started outside a test
    cpu_seconds: float  # since the run began


def kind_of(command: str) -> str:
    for fragment, kind in KINDS:
        if fragment in command:
            return kind
    program = command.split(" ", 1)[0]
    return Path(program).name or "(unnamed)"


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _cpu_and_start(pid: str) -> tuple[float, str]:
    """utime + stime in seconds, and the start time (with the pid, a process's identity)."""
    stat = _read(f"/proc/{pid}/stat").decode()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS, fields[19]


def _test_file(pid: str) -> str:
    for variable in _read(f"/proc/{pid}/environ").split(b"\0"):
        if variable.startswith(TEST_VARIABLE):
            return variable[len(TEST_VARIABLE) :].decode(errors="replace").split("::")[0]
    return ""


def _new_process(pid: str) -> Process:
    command = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()
    return Process(command, kind_of(command), _test_file(pid), 0.0)


class Sampler:
    """Every process seen, by (pid, start time); CPU counted from the first sample."""

    def __init__(self) -> None:
        self.processes: dict[tuple[str, str], Process] = {}
        self._start_cpu: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._own_pid = str(os.getpid())

    def sample(self, first: bool = False) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if pid == self._own_pid:
                continue
            try:
                cpu, start = _cpu_and_start(pid)
                key = (pid, start)
                if key not in self.processes:
                    self.processes[key] = _new_process(pid)
                    # A process already running when the run began counts from then.
                    self._start_cpu[key] = cpu if first else 0.0
            except OSError:  # gone, or not ours to read
                continue
            self.processes[key].cpu_seconds = cpu - self._start_cpu[key]

    def run(self) -> None:
        self.sample(first=True)
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()
        self.sample()

    def stop(self) -> None:
        self._stop.set()


def busy_ticks() -> tuple[int, int]:
    """(busy, all) jiffies of every core since boot: /proc/stat's first line."""
    values = [int(v) for v in _read("/proc/stat").split(b"\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _largest(totals: dict[str, float], top: int) -> list[tuple[str, float]]:
    return sorted(totals.items(), key=lambda item: -item[1])[:top]


def report(processes: list[Process], wall: float, busy: float, top: int) -> str:
    by_kind: defaultdict[str, float] = defaultdict(float)
    count: Counter[str] = Counter()
    by_test: defaultdict[str, float] = defaultdict(float)
    for process in processes:
        by_kind[process.kind] += process.cpu_seconds
        count[process.kind] += 1
        if process.test:
            by_test[process.test] += process.cpu_seconds
    lines = [
        f"wall {wall:.1f} s; the machine {busy:.0%} busy; "
        f"{sum(by_kind.values()):.0f} CPU-s in {len(processes)} processes",
        "",
        "CPU-s  processes  kind",
    ]
    lines += [f"{cpu:6.1f} {count[kind]:9d}  {kind}" for kind, cpu in _largest(by_kind, top)]
    lines += ["", "CPU-s  test file (the processes its tests started, pytest's own excluded)"]
    lines += [f"{cpu:6.1f}  {test}" for test, cpu in _largest(by_test, top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write every process seen here")
    parser.add_argument("--top", type=int, default=20, help="rows per table (default 20)")
    parser.add_argument("command", nargs="*", default=["make", "test"])
    args = parser.parse_args(argv)

    sampler = Sampler()
    thread = threading.Thread(target=sampler.run, daemon=True)
    busy_before, all_before = busy_ticks()
    started = time.monotonic()
    thread.start()
    status = subprocess.call(args.command)
    sampler.stop()
    thread.join()
    wall = time.monotonic() - started
    busy_after, all_after = busy_ticks()

    processes = [p for p in sampler.processes.values() if p.cpu_seconds > 0]
    busy = (busy_after - busy_before) / max(all_after - all_before, 1)
    print(report(processes, wall, busy, args.top), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in processes], indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main())
