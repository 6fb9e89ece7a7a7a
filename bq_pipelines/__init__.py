"""bq-pipelines: fills the Biodiversité Québec IO STAC catalog from public rasters."""
