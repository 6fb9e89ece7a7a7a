"""The tests' HTTP calls to the servers they start: httpx's functions with the process's TLS
context. `httpx.get()` builds a client per call, and each client loads the CA bundle (~19 ms of
CPU, against ~1 ms for a call on loopback): the polling loops of the API tests spent most of
their CPU there."""

from __future__ import annotations

from typing import Any

import httpx

from bq_pipelines.lib.http_guard import verified_context


def request(method: str, url: str, **options: Any) -> httpx.Response:
    """`httpx.request`, a new connection each time as there, without loading certificates."""
    return httpx.request(method, url, verify=verified_context(True), **options)


def get(url: str, **options: Any) -> httpx.Response:
    return request("GET", url, **options)


def head(url: str, **options: Any) -> httpx.Response:
    return request("HEAD", url, **options)


def post(url: str, **options: Any) -> httpx.Response:
    return request("POST", url, **options)


def put(url: str, **options: Any) -> httpx.Response:
    return request("PUT", url, **options)
