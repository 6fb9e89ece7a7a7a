"""A remote data host as most of them are: nginx serving static files (HEAD, GET, ranges, ETag,
Last-Modified) from a folder, on a free loopback port, stopped afterwards.

For the benchmarks: `http_host.LocalHttpHost` (Python's ThreadingHTTPServer, a thread per
connection) can count requests and inject faults, but its CPU per request is taken from the
machine being measured, where a remote host's is not. Debian's nginx: `make deploy-tools`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bq_pipelines.ingestion.code_servers import free_port, wait_until_listening

START_TIMEOUT_SECONDS = 10.0


def nginx_binary() -> str:
    """Debian's nginx (in /usr/sbin, which is not on every PATH)."""
    executable = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if executable is None:
        raise RuntimeError("nginx is not installed: run `make deploy-tools`")
    return executable


def static_conf(root: Path, folder: Path, port: int) -> Path:
    """One worker, keep-alive connections kept for the whole run, no access log. Started by
    root, nginx's worker would run as `nobody`, which cannot read a test's private folder."""
    main = folder / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"  {kind}_temp_path {folder}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main.write_text(
        f"{user}pid {folder}/nginx.pid;\nerror_log {folder}/error.log;\nworker_processes 1;\n"
        "events { worker_connections 1024; }\n"
        "http {\n  access_log off;\n  keepalive_requests 100000;\n  keepalive_timeout 60s;\n"
        f"{temp}\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n    root {root};\n  }}\n}}\n"
    )
    return main


@contextlib.contextmanager
def static_host(root: Path, folder: Path) -> Iterator[str]:
    """nginx serving `root` on a free loopback port (its files in `folder`); the base URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    binary = nginx_binary()
    main = static_conf(root, folder, port)
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(main), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    try:
        wait_until_listening(
            process, port, timeout=START_TIMEOUT_SECONDS, what=f"nginx on port {port}", poll=0.05
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
