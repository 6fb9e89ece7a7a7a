"""Classes of categorical bands as STAC classification class objects.

GDAL category names, raster attribute tables and CF flag attributes (with colour tables, RAT
colour columns or CF flag_colors as colour hints) become band metadata items, because a TIFF
cannot hold category names or attribute tables (GDAL would write them to an .aux.xml beside the
COG, which the object store never sees). The STAC item reads CLASSES_TAG back.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from rasterio.io import DatasetReader

from bq_pipelines.lib import vrt

# Band metadata items of our COGs: the band's classes as a JSON list of STAC classification
# class objects ({"value", "description", "name"?, "color_hint"?}), and GDAL's XML of the
# source's raster attribute table, kept whole.
CLASSES_TAG = "CLASSIFICATION_CLASSES"
RAT_TAG = "RASTER_ATTRIBUTE_TABLE"

# GDAL raster attribute table field usages (GDALRATFieldUsage) and types.
_RAT_NAME, _RAT_MIN, _RAT_MINMAX = 2, 3, 5
_RAT_RED, _RAT_GREEN, _RAT_BLUE = 6, 7, 8
_RAT_REAL = 1


def move_classes_to_metadata(band: ET.Element) -> None:
    """Turn a band's category names / attribute table / CF flags into CLASSES_TAG and RAT_TAG
    items of its metadata, and drop the elements a TIFF cannot hold."""
    tags = classification_tags(band)
    for tag in ("CategoryNames", "GDALRasterAttributeTable"):
        for element in band.findall(tag):
            band.remove(element)
    if tags:
        items = vrt.metadata_items(band)
        items.update(tags)
        for element in vrt.default_metadata_elements(band):
            band.remove(element)
        band.append(vrt.metadata_element(items))


def classification_tags(band: ET.Element) -> dict[str, str]:
    """CLASSES_TAG (and RAT_TAG when there is a table) for a band of a GDAL VRT; empty when
    the band has no classes of its own."""
    colours = _colour_table(band)
    tags: dict[str, str] = {}
    classes: list[dict[str, Any]] = []
    rat = band.find("GDALRasterAttributeTable")
    if rat is not None:
        tags[RAT_TAG] = ET.tostring(rat, encoding="unicode")
        classes = _rat_classes(rat, colours)
    names = band.find("CategoryNames")
    if not classes and names is not None:
        categories = [(element.text or "").strip() for element in names.findall("Category")]
        classes = [
            _class(value, text, colours.get(value)) for value, text in enumerate(categories) if text
        ]
    if not classes:
        classes = _cf_flag_classes(vrt.metadata_items(band))
    if classes:
        tags[CLASSES_TAG] = json.dumps(classes, ensure_ascii=False)
    return tags


def _class(value: int, text: str, colour: str | None) -> dict[str, Any]:
    """A STAC classification class object (v1.1: value and description required)."""
    item: dict[str, Any] = {"value": value, "description": text}
    name = re.sub(r"[^0-9A-Za-z_-]+", "_", text).strip("_")
    if name:
        item["name"] = name  # v2.0 requires it, with this pattern
    if colour:
        item["color_hint"] = colour
    return item


def _colour_table(band: ET.Element) -> dict[int, str]:
    table = band.find("ColorTable")
    if table is None:
        return {}
    return {
        index: "".join(f"{int(entry.get(c, '0')):02X}" for c in ("c1", "c2", "c3"))
        for index, entry in enumerate(table.findall("Entry"))
    }


def _rat_classes(rat: ET.Element, colours: dict[int, str]) -> list[dict[str, Any]]:
    """Classes of a thematic attribute table: one per row with a name and an integer value."""
    fields = [
        (
            (field_.findtext("Name") or "").strip(),
            int(field_.findtext("Type") or 0),
            int(field_.findtext("Usage") or 0),
        )
        for field_ in rat.findall("FieldDefn")
    ]
    usages = {usage: index for index, (_, _, usage) in reversed(list(enumerate(fields)))}
    value_column = usages.get(_RAT_MINMAX, usages.get(_RAT_MIN))
    if value_column is None:
        value_column = next((i for i, f in enumerate(fields) if f[0].lower() == "value"), None)
    name_column = usages.get(_RAT_NAME)
    if name_column is None:
        strings = [i for i, f in enumerate(fields) if f[1] == 2]
        named = [i for i in strings if re.search("class|name|label|categor", fields[i][0], re.I)]
        name_column = (named or strings)[0] if (named or strings) else None
    if name_column is None:
        return []
    rgb = [usages.get(usage) for usage in (_RAT_RED, _RAT_GREEN, _RAT_BLUE)]
    row0 = float(rat.get("Row0Min", "0"))
    bin_size = float(rat.get("BinSize", "1"))
    classes: dict[int, dict[str, Any]] = {}
    for row in rat.findall("Row"):
        cells = [cell.text or "" for cell in row.findall("F")]
        index = int(row.get("index", "0"))
        raw = cells[value_column] if value_column is not None else row0 + index * bin_size
        try:
            number = float(raw)
        except ValueError:
            continue
        text = cells[name_column].strip() if name_column < len(cells) else ""
        if not text or not number.is_integer() or int(number) in classes:
            continue
        value = int(number)
        colour = _rat_colour(cells, rgb, fields) or colours.get(value)
        classes[value] = _class(value, text, colour)
    return list(classes.values())


def _rat_colour(
    cells: list[str], rgb: list[int | None], fields: list[tuple[str, int, int]]
) -> str | None:
    if any(column is None or column >= len(cells) for column in rgb):
        return None
    levels = []
    for column in rgb:
        level = float(cells[column])  # type: ignore[index]
        # Real colour columns (e.g. ERDAS Imagine's) are 0-1, integer ones 0-255.
        if fields[column][1] == _RAT_REAL:  # type: ignore[index]
            level *= 255
        levels.append(min(255, max(0, round(level))))
    return "".join(f"{level:02X}" for level in levels)


def _cf_flag_classes(metadata: dict[str, str]) -> list[dict[str, Any]]:
    """Classes from CF `flag_values` / `flag_meanings` (/ `flag_colors`), as the netCDF driver
    reports a variable's attributes (e.g. ESA CCI land cover's lccs_class)."""
    values = [int(v) for v in re.findall(r"-?\d+", metadata.get("flag_values", ""))]
    meanings = metadata.get("flag_meanings", "").split()
    if not values or len(values) != len(meanings):
        return []
    colours = [c.lstrip("#") for c in metadata.get("flag_colors", "").split()]
    if len(colours) != len(values) or not all(re.fullmatch("[0-9A-Fa-f]{6}", c) for c in colours):
        colours = [""] * len(values)
    return [
        _class(value, meaning.replace("_", " "), colour.upper() or None)
        for value, meaning, colour in zip(values, meanings, colours, strict=True)
    ]


def classification_tags_by_band(src: DatasetReader) -> dict[int, dict[str, str]]:
    """CLASSES_TAG/RAT_TAG per band of a (possibly huge) source, from GDAL's VRT of it, parsed
    band by band so that a 45,810-band cube is never held as an element tree."""
    found: dict[int, dict[str, str]] = {}
    with vrt.serialized(src) as memory:
        for _, element in ET.iterparse(memory):
            if element.tag == "VRTRasterBand":
                tags = classification_tags(element)
                if tags:
                    found[int(element.get("band", "0"))] = tags
                element.clear()
    return found
