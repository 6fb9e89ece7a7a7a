"""The Dagster layer: a declaration turned into definitions (factory) from its assets, checks,
the partition step's batches and metadata (materialize, outcomes), its job, schedule and
sensors (jobs); their names (keys), the resources, previews and status shown in the UI, the
adopt job."""
