"""Datasets as data, without Dagster: the declaration schema and its templates, partitions
turned into item plans, what a catalog publishes compared with the plan, adoption, the drift
audit, the local-source sandbox and the demo rasters."""
