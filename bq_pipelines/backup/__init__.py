"""Catalog backups: dump, verify, retain and restore the STAC catalog (Dagster-free).

A backup is one object per day in the project's object store, `backups/<name>/<day><suffix>`,
with its sha256 and a manifest beside it (see `manifest`). The catalog is either the pgstac
database the STAC API serves (`pgstac`) or the static catalog folder (`static`); both implement
`backend.CatalogBackend`, and everything else works on that interface.
"""
