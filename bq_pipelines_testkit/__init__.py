"""Testing helpers of the tests and the benchmarks alike: generated rasters, a local HTTP host,
Dagster processes and in-process runs, the backfill code location, the ingestion API as it is
run, and the settings of the local services. No fixtures here: those are in bq_pipelines_tests."""
