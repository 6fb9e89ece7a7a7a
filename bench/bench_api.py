"""Benchmark: the ingestion API under load, then every accepted request processed exactly once.

Run from the project root, with the checkout's service ports exported like for the tests:
`.venv/bin/python bench/bench_api.py [--requests 1000] [--clients 20] [--store postgresql]`.

`python -m bq_pipelines.ingestion` (uvicorn, `--workers` processes) and a `dagster-daemon` on the
project's workspace run as subprocesses on the real services (`scripts/services.py up`): the
request store in PostgreSQL (or SQLite), stac-fastapi-pgstac, a moto S3 bucket. `--requests`
POST /newitem (the legacy README's example, a distinct item name each, a 64x48 float32 GeoTIFF
on a source host: nginx serving a folder, as most data hosts do; `--source-host python` for the
tests' LocalHttpHost in a process of its own) are sent by `--clients` concurrent clients
(asyncio, keep-alive) while the daemon processes them.

Acceptance latency is the time from sending a POST to its answer, the source's HEAD included:
each request names a source file of its own (`--sources` distinct files, hard links of one
raster), so no answer comes from a cache. Baselines measured in the same run at the same
concurrency: the same POSTs to a plain FastAPI endpoint (`bench/plain_fastapi.py`, uvicorn with
the API's settings: the framework's floor), and GET /status of one request (token check and one
read of the store). It also reports the CPU time each server spends per POST (user + system of
its processes, psutil): the latencies at 20 clients are mostly queueing for that CPU (Little's
law), and on a shared machine it is the figure that moves least with the load. Then it waits
until every accepted request is finished or failed and counts requests and Dagster runs:
accepted must equal processed, with one successful run per request.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402
import psutil  # noqa: E402
from results import write_result  # noqa: E402

from bq_pipelines.ingestion.code_servers import free_port  # noqa: E402
from bq_pipelines.ingestion.definitions import JOB_NAME, REQUEST_TAG  # noqa: E402
from bq_pipelines.ingestion.store import RequestStore  # noqa: E402
from bq_pipelines.lib.waiting import wait_until  # noqa: E402
from bq_pipelines_testkit.api_stack import (  # noqa: E402
    TOKEN,
    ApiStack,
    api_stack,
    legacy_example,
    on_services,
    temporary_collection,
)
from bq_pipelines_testkit.rasters import RasterSpec, write_raster  # noqa: E402
from bq_pipelines_testkit.services import SERVICES_ENV, parse_env_file  # noqa: E402
from bq_pipelines_testkit.static_host import static_host  # noqa: E402

PROCESS_TIMEOUT_SECONDS = 4 * 3600


@dataclass(frozen=True)
class Mirror:
    """The source host: a LocalHttpHost in a process of its own, as a remote host would be
    (in the benchmark's process, its threads competed with the clients for the interpreter lock
    and delayed the clock readings of every request)."""

    root: Path
    base_url: str

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"


MIRROR_SCRIPT = """
import sys
from pathlib import Path
from bq_pipelines_testkit.http_host import serving
with serving(Path(sys.argv[1])) as host:
    print(host.base_url, flush=True)
    sys.stdin.read()  # until the benchmark closes it
"""


@contextlib.contextmanager
def source_host(kind: str, root: Path) -> Iterator[Mirror]:
    """The requests' source host: nginx, as most data hosts are, or LocalHttpHost (Python, a
    thread per connection, whose CPU is taken from the two cores the API is measured on)."""
    if kind == "python":
        with mirror_process(root) as mirror:
            yield mirror
        return
    root.mkdir(parents=True, exist_ok=True)
    with static_host(root, root.parent / "nginx") as base_url:
        yield Mirror(root, base_url)


@contextlib.contextmanager
def mirror_process(root: Path) -> Iterator[Mirror]:
    root.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-c", MIRROR_SCRIPT, str(root)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield Mirror(root, process.stdout.readline().strip())
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def source_name(index: int) -> str:
    return f"source-{index:05d}.tif"


@contextlib.contextmanager
def plain_fastapi(stack: ApiStack, workers: int) -> Iterator[tuple[int, int]]:
    """bench/plain_fastapi.py under uvicorn (the API's settings) on a free port."""
    port = free_port()
    process = stack.deployment.start(
        "uvicorn",
        "--app-dir",
        str(ROOT / "bench"),
        "plain_fastapi:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "info",
        "--workers",
        str(workers),
        log_name="plain_fastapi",
    )

    def listening() -> bool:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        return False

    def exited() -> str | None:
        return None if process.poll() is None else f"exited with {process.returncode}"

    try:
        wait_until(listening, timeout=60, what="the plain API up", poll=0.1, failed=exited)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def summary(label: str, latencies: list[float], wall: float) -> dict[str, float]:
    ms = [1000 * v for v in latencies]
    row = {
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "per_s": len(ms) / wall,
    }
    print(
        f"{label:>26}: n={len(ms)} p50 {row['p50']:.1f} ms, p90 {row['p90']:.1f} ms, "
        f"p99 {row['p99']:.1f} ms, max {row['max']:.1f} ms, {row['per_s']:.0f}/s"
    )
    return row


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (uvicorn's workers), so far."""
    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def encode(method: str, path: str, body: dict[str, Any] | None, host: str) -> bytes:
    """One HTTP/1.1 request, keep-alive, with the token."""
    payload = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def load(
    host: str, port: int, requests: list[bytes], clients: int
) -> tuple[list[float], list[tuple[int, bytes]], float, float]:
    """Send the encoded requests over `clients` keep-alive connections, each waiting for its
    answer before the next; latencies, (status, body) answers, wall and client CPU seconds.

    A minimal client on asyncio streams: the load generator shares the machine's two cores
    with the server, and httpx's own per-request work would count into the latencies."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(requests)):
        queue.put_nowait(index)
    latencies: list[float] = [0.0] * len(requests)
    answers: list[tuple[int, bytes]] = [(0, b"")] * len(requests)

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while not queue.empty():
            index = queue.get_nowait()
            started = time.perf_counter()
            writer.write(requests[index])
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            answers[index] = (status, await reader.readexactly(length))
            latencies[index] = time.perf_counter() - started
        writer.close()
        await writer.wait_closed()

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, answers, time.perf_counter() - started, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--process",
        choices=("during", "after", "none"),
        default="during",
        help="start the daemon before the POSTs (it processes while they arrive), after them, "
        "or not at all (acceptance only)",
    )
    parser.add_argument("--workers", type=int, default=1, help="BQ_API_WORKERS")
    parser.add_argument(
        "--source-host",
        choices=("nginx", "python"),
        default="nginx",
        help="what serves the sources: nginx, or the tests' LocalHttpHost (Python)",
    )
    parser.add_argument(
        "--sources",
        type=int,
        default=0,
        help="distinct source files the requests name (0: one per request)",
    )
    args = parser.parse_args()

    up = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), "up"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if up.returncode != 0:
        print(up.stdout, up.stderr, file=sys.stderr)
        return 1
    services = parse_env_file(SERVICES_ENV)
    collection_id = f"bench-api-{uuid.uuid4().hex[:8]}"
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, nproc {os.cpu_count()}, load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}, {args.requests} POSTs, "
        f"{args.clients} clients, store {args.store}, API workers {args.workers}, "
        f"daemon: {args.process}, source host: {args.source_host}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-api-") as folder:
        work = Path(folder)
        with (
            source_host(args.source_host, work / "mirror") as mirror,
            temporary_collection(services["BQ_STAC_API_URL"], collection_id),
            on_services(services, work / "bq", f"{mirror.base_url}/data/", args.store) as bq,
            api_stack(work, {**bq, "BQ_API_WORKERS": str(args.workers)}) as stack,
        ):
            raster = write_raster(
                mirror.root / "data" / "filename.tif", RasterSpec(width=64, height=48)
            )
            for index in range(args.sources or args.requests):
                os.link(raster, mirror.root / "data" / source_name(index))
            # What `make api` runs: the API, and a daemon at a lower CPU priority.
            stack.start_api(*(["--with-daemon"] if args.process == "during" else []))
            return run(stack, args, collection_id, mirror, services, bq["BQ_API_DATABASE_URL"])


def run(
    stack: ApiStack,
    args: argparse.Namespace,
    collection_id: str,
    mirror: Mirror,
    services: dict[str, str],
    database_url: str,
) -> int:
    stac_api = services["BQ_STAC_API_URL"]
    sources = args.sources or args.requests
    posts = [
        (
            "POST",
            "/newitem",
            {
                **legacy_example(collection_id, f"bench-{i:05d}", mirror.url("data"), stac_api),
                "filename": source_name(i % sources),
            },
        )
        for i in range(args.requests)
    ]
    # Warm-up (first connections, imports, caches): one of each, not counted.
    probe_id = stack.accepted(
        legacy_example(collection_id, "bench-warmup", mirror.url("data"), stac_api)
    )
    stack.status(probe_id)

    host = f"127.0.0.1:{stack.port}"
    encoded = [encode(method, path, body, host) for method, path, body in posts]
    with plain_fastapi(stack, args.workers) as (plain_port, plain_pid):
        plain_host = f"127.0.0.1:{plain_port}"
        plain_posts = [encode(method, path, body, plain_host) for method, path, body in posts]
        asyncio.run(load("127.0.0.1", plain_port, plain_posts[:50], args.clients))  # warm-up
        api_cpu = cpu_seconds(stack.api.pid)
        latencies, answers, wall, cpu = asyncio.run(
            load("127.0.0.1", stack.port, encoded, args.clients)
        )
        api_cpu = cpu_seconds(stack.api.pid) - api_cpu
        plain_cpu = cpu_seconds(plain_pid)
        plain_latencies, plain_answers, plain_wall, _ = asyncio.run(
            load("127.0.0.1", plain_port, plain_posts, args.clients)
        )
        plain_cpu = cpu_seconds(plain_pid) - plain_cpu
    assert all(status == 200 for status, _ in plain_answers)
    accepted = [json.loads(body)["id"] for status, body in answers if status == 200]
    refused = collections.Counter(status for status, _ in answers if status != 200)
    post = summary("POST /newitem (accept)", latencies, wall)
    print(f"{'client CPU':>26}: {cpu / len(posts) * 1000:.2f} ms per request")
    # The API's own CPU per POST: what the p99 at 20 clients is made of on a busy machine
    # (Little's law), and a figure that does not depend on the machine's load.
    post["api_cpu_ms"] = api_cpu / len(posts) * 1000
    print(f"{'API CPU':>26}: {post['api_cpu_ms']:.2f} ms per accepted POST")
    plain = summary("plain FastAPI POST", plain_latencies, plain_wall)
    plain["api_cpu_ms"] = plain_cpu / len(posts) * 1000
    print(f"{'plain FastAPI CPU':>26}: {plain['api_cpu_ms']:.2f} ms per POST")
    print(f"ratio p99 POST / p99 plain FastAPI POST: {post['p99'] / plain['p99']:.2f}")
    gets = [encode("GET", f"/status?id={probe_id}", None, host)] * args.requests
    get_cpu = cpu_seconds(stack.api.pid)
    base_latencies, base_answers, base_wall, _ = asyncio.run(
        load("127.0.0.1", stack.port, gets, args.clients)
    )
    get_cpu = cpu_seconds(stack.api.pid) - get_cpu
    assert all(status == 200 for status, _ in base_answers)
    base = summary("GET /status (baseline)", base_latencies, base_wall)
    base["api_cpu_ms"] = get_cpu / len(gets) * 1000
    print(f"ratio p99 POST / p99 GET /status: {post['p99'] / base['p99']:.2f}")
    print(f"accepted {len(accepted)} of {args.requests}; refused {dict(refused)}")
    summaries = {"POST /newitem": post, "plain FastAPI POST": plain, "GET /status": base}
    if args.process == "none":
        write_api_result(args, summaries, f"accepted {len(accepted)} of {args.requests}")
        return 0 if len(accepted) == args.requests else 1
    if args.process == "after":
        stack.start_daemon()

    started = time.monotonic()
    ids = set(accepted) | {probe_id}
    with RequestStore(database_url) as store:
        while True:
            counts = store.counts_by_state()
            done = counts.get("finished", 0) + counts.get("failed", 0)
            print(f"  {time.monotonic() - started:7.0f} s: {counts}", flush=True)
            if done >= len(ids) or time.monotonic() - started > PROCESS_TIMEOUT_SECONDS:
                break
            time.sleep(30)
    processing = time.monotonic() - started
    with stack.instance() as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=JOB_NAME))
    per_key = collections.Counter(
        run.tags.get(REQUEST_TAG) for run in runs if run.status == dg.DagsterRunStatus.SUCCESS
    )
    statuses = collections.Counter(run.status.value for run in runs)
    twice = [key for key, n in per_key.items() if n > 1]
    print(
        f"processed: {counts.get('finished', 0)} finished, {counts.get('failed', 0)} failed "
        f"of {len(ids)} accepted (incl. the warm-up) in {processing:.0f} s "
        f"({len(ids) / processing * 60:.1f} requests/min); runs {dict(statuses)}, requests "
        f"with more than one successful run: {len(twice)}, without one: {len(ids - set(per_key))}"
    )
    ok = counts.get("finished", 0) == len(ids) and not twice and set(per_key) == ids
    print("accepted == processed, one successful run each:", ok)
    write_api_result(
        args,
        summaries,
        f"accepted {len(accepted)} of {args.requests}; processed in {processing:.0f} s "
        f"({len(ids) / processing * 60:.1f} requests/min); accepted == processed, one "
        f"successful run each: {ok}",
    )
    return 0 if ok else 1


P99_GOAL_MS = 100.0


def write_api_result(
    args: argparse.Namespace, summaries: dict[str, dict[str, float]], outcome: str
) -> None:
    post = summaries["POST /newitem"]
    write_result(
        "bench_api" if args.process == "none" else f"bench_api-process-{args.process}",
        title=f"Ingestion API: {args.requests} POSTs from {args.clients} clients, store "
        f"{args.store}, {args.workers} API worker(s), daemon {args.process}, source host "
        f"{args.source_host}",
        goal=f"p99 of an accepted POST (the source's HEAD included) <= {P99_GOAL_MS:.0f} ms at "
        f"{args.clients} clients. {outcome}.",
        baseline="a plain FastAPI endpoint (bench/plain_fastapi.py) and GET /status, same run",
        columns=[
            "endpoint",
            "p50 (ms)",
            "p90 (ms)",
            "p99 (ms)",
            "max (ms)",
            "requests / s",
            "server CPU / request (ms)",
        ],
        rows=[
            [name, row["p50"], row["p90"], row["p99"], row["max"], row["per_s"], row["api_cpu_ms"]]
            for name, row in summaries.items()
        ],
        ratio=post["p99"] / summaries["plain FastAPI POST"]["p99"],
        met=post["p99"] <= P99_GOAL_MS,
        figures={"summaries_ms": summaries},
    )


if __name__ == "__main__":
    sys.exit(main())
