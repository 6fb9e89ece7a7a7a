"""Narrow the wide or optional types Dagster and our publishers return (a metadata value, a
sensor's result, a published item) to what a test relies on, failing with what was found."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import dagster as dg

from bq_pipelines.lib.catalog.base import Publisher
from bq_pipelines.lib.storage.base import ObjectStore, StoredObject

T = TypeVar("T")


def metadata_value(metadata: Mapping[str, dg.MetadataValue], key: str, kind: type[T]) -> T:
    """The value of `metadata[key]`, which must be a `kind` (Dagster types it as any of a dozen)."""
    value = metadata[key].value
    assert isinstance(value, kind), f"metadata {key!r}: {value!r} is not a {kind.__name__}"
    return value


def sensor_result(
    sensor: dg.SensorDefinition, context: dg.SensorEvaluationContext
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of `sensor`, which returns a `SensorResult` or skips, as ours all do."""
    result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason), f"{sensor.name}: {result!r}"
    return result


class _Requesting(Protocol):
    """A sensor's or a schedule's evaluation."""

    @property
    def run_requests(self) -> Sequence[dg.RunRequest] | None: ...


def run_requests(evaluation: _Requesting) -> Sequence[dg.RunRequest]:
    """The runs an evaluation requests (`None`, which Dagster allows, would fail the test)."""
    assert evaluation.run_requests is not None, f"{evaluation!r} requests no run list"
    return evaluation.run_requests


def published_collection(publisher: Publisher, collection_id: str) -> dict[str, Any]:
    """The collection `publisher` holds, which the test expects there."""
    collection = publisher.get_collection(collection_id)
    assert collection is not None, f"collection {collection_id} not published"
    return collection


def published_item(publisher: Publisher, collection_id: str, item_id: str) -> dict[str, Any]:
    """The item `publisher` holds, which the test expects there."""
    item = publisher.get_item(collection_id, item_id)
    assert item is not None, f"item {collection_id}/{item_id} not published"
    return item


def step_failure_message(record: dg.EventLogRecord) -> str:
    """The error message of a STEP_FAILURE event's record."""
    event = record.event_log_entry.dagster_event
    assert event is not None and event.step_failure_data.error is not None, record
    return event.step_failure_data.error.message


def materialization_of(record: dg.EventLogRecord) -> dg.AssetMaterialization:
    """The materialization a record of `fetch_materializations` holds."""
    materialization = record.asset_materialization
    assert materialization is not None, record
    return materialization


def resources_of(definitions: dg.Definitions) -> Mapping[str, Any]:
    """The resources `definitions` bind, which a code location always has."""
    assert definitions.resources is not None, "no resources bound"
    return definitions.resources


def stored_object(store: ObjectStore, key: str) -> StoredObject:
    """What the store holds under `key`, which the test expects there."""
    found = store.stat(key)
    assert found is not None, f"no object under {key!r}"
    return found
