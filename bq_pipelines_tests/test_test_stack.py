"""The tests run on a stack of their own: never the database, ports or env file of the stack
`make services` runs for a user (scripts/services.py --stack test)."""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg

from bq_pipelines_testkit.services import local_stack, stack_database_prefix

USER_PORTS = {9010, 8082, 8084}


def test_the_tests_stack_is_not_the_users(services_env: dict[str, str]) -> None:
    database = psycopg.conninfo.conninfo_to_dict(services_env["BQ_PGSTAC_DSN"])["dbname"]
    assert database == local_stack("stacks").test_stack().database
    assert f"{database}_" == stack_database_prefix()
    assert database != local_stack("stacks").user_stack().database
    urls = ("BQ_S3_ENDPOINT_URL", "BQ_STAC_API_URL", "BQ_TILER_URL")
    ports = {urlsplit(services_env[name]).port for name in urls}
    assert len(ports) == 3 and not ports & USER_PORTS


def test_the_test_stack_is_named_after_the_checkout() -> None:
    stack = local_stack("stacks").test_stack()
    assert stack.database == f"bq_test_{local_stack('stacks').checkout_hash()}"
    assert stack.env_file.name == "test-stack.env" and stack.state_dir.name == "test-stack"
    ports = local_stack("ports").test_port_candidates()[0]
    assert all(20000 <= port < 30000 for port in ports) and len(set(ports)) == 3
