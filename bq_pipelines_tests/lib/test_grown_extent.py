"""lib/stac/collection.py grown_extent: an extent grown item by item (the ingestion API)."""

from __future__ import annotations

from typing import Any

from bq_pipelines.lib import stac


def item(bbox: list[float], when: str) -> dict[str, Any]:
    return {"type": "Feature", "bbox": bbox, "properties": {"datetime": when}}


def collection(bbox: list[float], interval: list[str | None]) -> dict[str, Any]:
    return {"extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}}}


def test_the_placeholder_extent_of_an_empty_collection_is_replaced():
    empty = stac.build_collection(
        collection_id="c", title="t", description="d", license_="CC-BY-4.0", items=[]
    ).to_dict()
    grown = stac.grown_extent(empty, [item([-75, 45, -74, 46], "2018-01-01T00:00:00Z")])
    assert grown["spatial"]["bbox"] == [[-75, 45, -74, 46]]
    [[start, end]] = grown["temporal"]["interval"]
    assert start.startswith("2018-01-01T00:00:00") and end.startswith("2018-01-01T00:00:00")


def test_the_extent_grows_to_the_item_and_keeps_its_texts_otherwise():
    current = collection([-80, 40, -70, 50], ["2000-01-01T00:00:00Z", "2010-12-31T00:00:00Z"])
    inside = stac.grown_extent(current, [item([-75, 45, -74, 46], "2005-06-01T00:00:00Z")])
    assert inside == current["extent"]  # unchanged: nothing to publish

    grown = stac.grown_extent(current, [item([-85, 45, -60, 55], "2020-01-01T00:00:00Z")])
    assert grown["spatial"]["bbox"] == [[-85, 40, -60, 55]]
    [[start, end]] = grown["temporal"]["interval"]
    assert start == "2000-01-01T00:00:00Z" and end.startswith("2020-01-01T00:00:00")


def test_an_open_end_stays_open():
    current = collection([-80, 40, -70, 50], ["2000-01-01T00:00:00Z", None])
    grown = stac.grown_extent(current, [item([-75, 45, -74, 46], "1990-01-01T00:00:00Z")])
    [[start, end]] = grown["temporal"]["interval"]
    assert start.startswith("1990-01-01") and end is None
