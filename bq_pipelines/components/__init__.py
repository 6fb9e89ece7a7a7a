"""Dagster components of the project: `StacDataset`, one instance per dataset under defs/."""

from bq_pipelines.components.stac_dataset import StacDataset

__all__ = ["StacDataset"]
