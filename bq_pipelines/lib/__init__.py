"""Dagster-free core: fetch, convert, store, describe and publish rasters."""
