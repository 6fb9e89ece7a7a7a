"""The local stack of scripts/services.py, one module per concern: `stacks` (names, places and
the machine's PostgreSQL), `ports`, `s3` (moto), `apis` (stac-fastapi-pgstac, titiler-pgstac),
`processes` (PID files, spawning, signals), `lifecycle` (start, await, reuse, stop),
`postgres` (PostGIS, the database, pgstac), `env_file` and `commands` (up, down, status)."""
