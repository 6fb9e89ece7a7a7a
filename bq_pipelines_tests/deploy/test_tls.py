"""TLS at the stack's front door: nginx answers HTTPS with the certificate and key mounted from
the files deploy/.env names, redirects plain HTTP to HTTPS, and sends HSTS. Checked in the files
and with Debian's nginx (`make deploy-tools`) running this very configuration on loopback with a
self-signed certificate made here: only the upstream addresses and ports are rewritten.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bq_pipelines.ingestion.code_servers import free_port
from bq_pipelines.lib.waiting import wait_until
from bq_pipelines_testkit.static_host import nginx_binary
from bq_pipelines_tests.deploy.stack import DEPLOY_DIR, URL_VALUES, docker_compose, filled_env

NGINX_CONF = DEPLOY_DIR / "nginx" / "default.conf"
CERTIFICATE = "/etc/nginx/tls/certificate.pem"
CERTIFICATE_KEY = "/etc/nginx/tls/certificate.key"
HSTS = "max-age=31536000; includeSubDomains"


def server_blocks(conf: str) -> list[str]:
    """The text of each top-level `server { ... }` block."""
    blocks, depth, start = [], 0, None
    for match in re.finditer(r"(?<![\w-])server\s*\{|\{|\}", conf):
        if match.group().startswith("server") and depth == 0:
            start = match.start()
        if match.group().endswith("{"):
            depth += 1
        else:
            depth -= 1
            if depth == 0 and start is not None:
                blocks.append(conf[start : match.end()])
                start = None
    return blocks


def test_nginx_serves_https_redirects_http_and_sends_hsts() -> None:
    conf = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())  # directives only
    plain, secure = server_blocks(conf)
    assert "listen 80;" in plain and "ssl" not in plain
    assert "return 301 https://$host$request_uri;" in plain
    # Nothing but the health check is served in clear.
    assert "proxy_pass" not in plain and "auth_basic" not in plain
    assert "listen 443 ssl;" in secure
    assert f"ssl_certificate {CERTIFICATE};" in secure
    assert f"ssl_certificate_key {CERTIFICATE_KEY};" in secure
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in secure
    assert f'add_header Strict-Transport-Security "{HSTS}" always;' in secure
    # A location with its own add_header would drop the server's HSTS header there.
    assert secure.count("add_header") == 1
    for route in ("location /dagster/", "location /api/", "location /tiler/", "location / "):
        assert route in secure, route


def test_the_certificate_files_come_from_the_env_and_both_ports_are_published(
    tmp_path: Path,
) -> None:
    env = filled_env(
        tmp_path,
        **URL_VALUES,
        BQ_TLS_CERTIFICATE="/etc/letsencrypt/live/bq.example.org/fullchain.pem",
        BQ_TLS_CERTIFICATE_KEY="/etc/letsencrypt/live/bq.example.org/privkey.pem",
        BQ_HTTPS_PORT="8443",
    )
    result = docker_compose("--env-file", str(env), "config")
    assert result.returncode == 0, result.stderr
    nginx = yaml.safe_load(result.stdout)["services"]["nginx"]
    mounts = {tuple(volume.split(":")[:2]) for volume in nginx["volumes"]}
    assert ("/etc/letsencrypt/live/bq.example.org/fullchain.pem", CERTIFICATE) in mounts
    assert ("/etc/letsencrypt/live/bq.example.org/privkey.pem", CERTIFICATE_KEY) in mounts
    published = {(str(p["published"]), int(p["target"])) for p in map(_port, nginx["ports"])}
    assert published == {("80", 80), ("8443", 443)}


def test_compose_refuses_a_missing_certificate_setting_naming_it(tmp_path: Path) -> None:
    env = filled_env(tmp_path, **URL_VALUES, BQ_TLS_CERTIFICATE_KEY="")
    result = docker_compose("--env-file", str(env), "config")
    assert result.returncode != 0
    assert "set BQ_TLS_CERTIFICATE_KEY in deploy/.env" in result.stderr


def test_compose_has_no_obsolete_version_key() -> None:
    assert "version" not in yaml.safe_load((DEPLOY_DIR / "compose.yaml").read_text())


def _port(entry: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(entry, dict):
        return entry
    published, target = entry.rsplit(":", 1)
    return {"published": published, "target": target}


# ------------------------------------------------------------------ nginx, running


def self_signed(folder: Path) -> tuple[Path, Path]:
    certificate, key = folder / "certificate.pem", folder / "certificate.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(certificate)),
        ],
        check=True,
        capture_output=True,
    )
    return certificate, key


def loopback_conf(folder: Path, http_port: int, https_port: int) -> Path:
    """deploy/nginx/default.conf with loopback listeners, the test's certificate and htpasswd,
    and upstreams on loopback (nginx resolves upstream names when it starts)."""
    certificate, key = self_signed(folder)
    (folder / "htpasswd").write_text("operator:$apr1$x$invalid\n")
    conf = NGINX_CONF.read_text()
    conf = re.sub(r"server [a-z-]+:(\d+);", r"server 127.0.0.1:\1;", conf)
    replacements = {
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        CERTIFICATE_KEY: str(key),
        CERTIFICATE: str(certificate),
        "/etc/nginx/auth/htpasswd": str(folder / "htpasswd"),
    }
    for old, new in replacements.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    (folder / "default.conf").write_text(conf)
    main = folder / "nginx.conf"
    main.write_text(
        f"pid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {folder}/body;\n"
        f"  proxy_temp_path {folder}/proxy;\n  fastcgi_temp_path {folder}/fastcgi;\n"
        f"  uwsgi_temp_path {folder}/uwsgi;\n  scgi_temp_path {folder}/scgi;\n"
        f"  include {folder}/default.conf;\n}}\n"
    )
    return main


@pytest.fixture
def front_door(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """nginx running deploy/nginx/default.conf on two loopback ports; stopped afterwards."""
    http_port, https_port = free_port(), free_port()
    main = loopback_conf(tmp_path, http_port, https_port)
    binary = nginx_binary()
    check = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr  # `nginx -t`: the configuration is valid
    process = subprocess.Popen(
        [binary, "-p", str(tmp_path), "-c", str(main), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def exited() -> str | None:
        if process.poll() is None:
            return None
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        return f"exited with {process.returncode}: {stderr}"

    try:
        what = f"nginx listening on port {https_port}"
        wait_until(lambda: _answers(https_port), timeout=10, what=what, poll=0.05, failed=exited)
        yield http_port, https_port, tmp_path / "certificate.pem"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_running_nginx_redirects_to_https_and_sends_hsts_there(
    front_door: tuple[int, int, Path],
) -> None:
    http_port, https_port, certificate = front_door
    with httpx.Client(timeout=5) as plain:
        answer = plain.get(
            f"http://127.0.0.1:{http_port}/collections?limit=2",
            headers={"Host": "bq.example.org"},
        )
        assert answer.status_code == 301
        assert answer.headers["location"] == "https://bq.example.org/collections?limit=2"
        login = plain.get(f"http://127.0.0.1:{http_port}/dagster/", headers={"Host": "h"})
        assert login.status_code == 301  # the UI's password never crosses in clear
        assert plain.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
    with httpx.Client(base_url=f"https://127.0.0.1:{https_port}", verify=str(certificate)) as tls:
        health = tls.get("/healthz")
        assert health.status_code == 200 and health.text == "ok\n"
        assert health.headers["strict-transport-security"] == HSTS
        # Refusals carry it too (`always`): basic auth of the UI, Transactions of the STAC API.
        for method, path, status in (("GET", "/dagster/", 401), ("POST", "/collections", 403)):
            answer = tls.request(method, path)
            assert answer.status_code == status, (method, path)
            assert answer.headers["strict-transport-security"] == HSTS
