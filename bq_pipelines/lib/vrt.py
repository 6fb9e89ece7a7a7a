"""GDAL VRT documents: GDAL's own serialization of a dataset, edited as XML, read from memory.

rasterio exposes neither category names nor attribute tables, nor a way to describe a band
selection, a stack or a warp with its metadata; a VRT written by GDAL holds all of them, and GDAL
reads an edited one back as a dataset.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import rasterio
import rasterio.shutil
from rasterio.io import DatasetReader, MemoryFile
from rasterio.vrt import WarpedVRT

from bq_pipelines.lib.errors import CogError

# GDAL data type names (rasterio keeps its own mapping private).
NUMPY_DTYPES = {
    "Byte": "uint8",
    "Int8": "int8",
    "UInt16": "uint16",
    "Int16": "int16",
    "UInt32": "uint32",
    "Int32": "int32",
    "UInt64": "uint64",
    "Int64": "int64",
    "Float32": "float32",
    "Float64": "float64",
    "CInt16": "complex_int16",
    "CInt32": "complex_int32",
    "CFloat32": "complex64",
    "CFloat64": "complex128",
}


@contextmanager
def serialized(source: str | DatasetReader | WarpedVRT) -> Iterator[MemoryFile]:
    """GDAL's own VRT of a dataset (a name or an open one), in memory: its bands with every
    piece of metadata GDAL knows (including category names and attribute tables, which rasterio
    does not expose).

    In memory (/vsimem/): on this kind of disk each file created and removed costs ~1-3 ms, as
    much as converting a small raster. Given a name, GDAL opens it without rasterio's dataset
    set-up, the cheapest way to learn everything about an input.
    """
    name = source if isinstance(source, str) else source.name
    with MemoryFile(ext=".vrt") as memory:
        try:
            rasterio.shutil.copy(source, memory.name, driver="VRT")
        except Exception as exc:  # GDAL's CPLE_* classes, which rasterio does not export
            raise CogError(f"{name}: cannot read raster: {exc}") from exc
        memory.seek(0)
        yield memory


def serialize(source: str | DatasetReader | WarpedVRT) -> ET.Element:
    with serialized(source) as memory:
        return ET.fromstring(memory.read())


def in_memory(root: ET.Element, stack: ExitStack) -> str:
    """The /vsimem/ name of a VRT written from `root`, alive as long as `stack`."""
    memory = stack.enter_context(MemoryFile(ET.tostring(root, encoding="utf-8"), ext=".vrt"))
    return str(memory.name)


def numpy_dtype(gdal_type: str) -> str:
    try:
        return NUMPY_DTYPES[gdal_type]
    except KeyError:
        raise CogError(f"GDAL data type {gdal_type} is not supported") from None


def default_metadata_elements(element: ET.Element) -> list[ET.Element]:
    return [m for m in element.findall("Metadata") if m.get("domain", "") == ""]


def metadata_items(element: ET.Element) -> dict[str, str]:
    """Default-domain metadata (MDI key/value) of a VRT dataset or band element."""
    return {
        item.get("key", ""): item.text or ""
        for metadata in default_metadata_elements(element)
        for item in metadata.findall("MDI")
    }


def metadata_element(items: dict[str, str]) -> ET.Element:
    metadata = ET.Element("Metadata")
    for key, value in items.items():
        ET.SubElement(metadata, "MDI", key=key).text = value
    return metadata


def set_child_text(element: ET.Element, tag: str, text: str) -> None:
    child = element.find(tag)
    if child is None:
        child = ET.SubElement(element, tag)
    child.text = text


def add_source(band: ET.Element, kind: str, filename: str, source_band: str) -> ET.Element:
    source = ET.SubElement(band, kind)
    ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = filename
    ET.SubElement(source, "SourceBand").text = source_band
    return source
