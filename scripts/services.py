"""Start, stop and inspect a real local stack for dev and tests: moto S3, stac-fastapi-pgstac and
titiler-pgstac on a pgstac database of the machine's PostgreSQL.

Usage: `python scripts/services.py up|down|status [--stack user|test]` (the project venv's python).

- `user` (the default; `make services`): database `bq_catalog` (BQ_CATALOG_DB) and ports
  9010/8082/8084 (BQ_S3_PORT, BQ_STAC_API_PORT, BQ_TILER_PORT); writes `.bq/services.env`, which
  `. .bq/services.env` points the project at. `down` stops the servers and keeps the database.
- `test` (`make test`): this checkout's tests' own stack, never a user's: database
  `bq_test_<8 hex>` and three ports in 20000-29999, both derived from the checkout's path (the
  ports move on while taken); writes `.bq/test-stack.env`, keeps its PID files and logs under
  `.bq/test-stack/`. `up` begins on a new database when none of its servers runs; `down` drops
  it, with every database named after it (the copies tests make beside it).

`up` is idempotent: it installs PostGIS if missing, prepares the database (extensions + pgstac
migrations), starts or reuses the three servers and writes the stack's env file. `down` stops only
the processes whose PID files `up` wrote. PostgreSQL itself is the machine's (127.0.0.1:5432,
trust auth) and is never started or stopped.
"""

from __future__ import annotations

import argparse
import sys

from local_stack.commands import cmd_down, cmd_status, cmd_up
from local_stack.stacks import STACKS, START_TIMEOUT_S, ServicesError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--stack",
        choices=sorted(STACKS),
        default="user",
        help="the user's stack (`make services`) or this checkout's tests' own (`make test`)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=START_TIMEOUT_S,
        help="seconds to wait for each server to answer (default %(default)s)",
    )
    args = parser.parse_args(argv)
    stack = STACKS[args.stack]()
    try:
        if args.command == "up":
            return cmd_up(stack, args.timeout)
        if args.command == "down":
            return cmd_down(stack)
        return cmd_status(stack)
    except ServicesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
