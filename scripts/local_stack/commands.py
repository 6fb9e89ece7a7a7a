"""The `up`, `down` and `status` commands of scripts/services.py, one stack at a time."""

from __future__ import annotations

import time
from pathlib import Path

from bq_pipelines.lib.files import exclusive_lock
from local_stack.env_file import write_env_file
from local_stack.lifecycle import ensure_running, stop
from local_stack.ports import services_on, stack_ports
from local_stack.postgres import (
    drop_stack_databases,
    ensure_catalog_database,
    ensure_postgis_package,
    migrate_pgstac,
    pgstac_version,
)
from local_stack.processes import owned_pid, restore_default_signals
from local_stack.s3 import ensure_bucket
from local_stack.stacks import HOST, PG_PORT, PROJECT_ROOT, Stack


def lock_file(stack: Stack) -> Path:
    """Serialises `up`/`down` of one stack (parallel pytest sessions share one checkout)."""
    return stack.run_dir / "services.lock"


def cmd_up(stack: Stack, timeout: float) -> int:
    started = time.monotonic()
    restore_default_signals()
    with exclusive_lock(lock_file(stack)):
        ports = stack_ports(stack)
        moto, stac, tiler = services_on(stack, ports)
        print(ensure_postgis_package())
        if stack.disposable and not any(owned_pid(s) for s in (moto, stac, tiler)):
            print(drop_stack_databases(stack))  # a new run begins on a new database
        print(ensure_catalog_database(stack))
        print(migrate_pgstac(stack))
        print(ensure_running(moto, timeout))
        print(ensure_bucket(moto.port))
        print(ensure_running(stac, timeout))
        print(ensure_running(tiler, timeout))
        write_env_file(stack, ports)
    relative = stack.env_file.relative_to(PROJECT_ROOT)
    print(f"wrote {relative} (. {relative}); up in {time.monotonic() - started:.1f} s")
    return 0


def cmd_down(stack: Stack) -> int:
    with exclusive_lock(lock_file(stack)):
        moto, stac, tiler = services_on(stack, stack_ports(stack))
        for service in (tiler, stac, moto):
            print(stop(service))
        if stack.disposable:
            print(drop_stack_databases(stack))
            stack.env_file.unlink(missing_ok=True)
    return 0


def cmd_status(stack: Stack) -> int:
    """Exit status 0 when every service answers, 1 otherwise."""
    all_answer = True
    for service in services_on(stack, stack_ports(stack)):
        pid = owned_pid(service)
        answers = service.answers(service.port)
        all_answer &= answers
        owner = f"pid {pid}" if pid is not None else "no pid file of ours"
        state = "answers" if answers else "does not answer"
        print(f"{service.name:9} {HOST}:{service.port}  {state}  ({owner})")
    version = pgstac_version(stack)
    all_answer &= version is not None
    pg_state = f"answers, pgstac {version}" if version else "does not answer or no pgstac"
    print(f"{'postgres':9} {HOST}:{PG_PORT}  {pg_state} in {stack.database}  (system service)")
    return 0 if all_answer else 1
