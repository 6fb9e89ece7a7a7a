"""Shared fixtures: generated rasters and STAC items, a local HTTP host, and the real services."""

from __future__ import annotations

pytest_plugins = [
    "bq_pipelines_tests.fixtures.http_server",
    "bq_pipelines_tests.fixtures.services",
    "bq_pipelines_tests.fixtures.tcp_proxy",
    "bq_pipelines_tests.fixtures.demo",  # after services, which it imports
    "bq_pipelines_tests.fixtures.stac_items",
    "bq_pipelines_tests.scheduling",
]
