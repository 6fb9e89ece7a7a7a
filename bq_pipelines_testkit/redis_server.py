"""A Redis of the test's own: `redis-server` on a free loopback port, in memory only, stopped
afterwards. The Celery tests' broker and result backend: a queue no other test or checkout reads
from, keys and locks the tests may read and take, never the machine's Redis (anything else may
use it). Debian's redis-server: `make deploy-tools`.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator

from bq_pipelines.ingestion.code_servers import free_port, wait_until_listening

START_TIMEOUT_SECONDS = 10.0


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A new, empty Redis on a free loopback port; its URL (database 0)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run `make deploy-tools`")
    port = free_port()
    process = subprocess.Popen(
        # Nothing written to disk (no snapshot, no append-only file), no config file read.
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_listening(
            process, port, timeout=START_TIMEOUT_SECONDS, what=f"redis-server on port {port}"
        )
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
