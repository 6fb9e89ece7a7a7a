"""The ingestion API: the legacy `/newitem` contract, each request stored, then processed by a
Dagster run of the `ingestion_api/stac_item` asset (see `bq_pipelines/ingestion/definitions.py`)."""
