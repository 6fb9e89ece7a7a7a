"""The Dagster layer: a declaration turned into assets, checks, jobs, sensors and schedules
(factory), their names (keys), the resources, previews and status shown in the UI, the adopt
job."""
