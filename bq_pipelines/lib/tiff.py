"""A TIFF's first directory read from its bytes, without GDAL: what GDAL does not say.

The first directory (IFD) of a TIFF describes its full-resolution image, whose data a COG
stores last. Reading it directly tells whether the image is tiled (rio-cogeo's test is wrong for
a COG one block wide) and whether the file was cut short (GDAL only finds out mid-conversion,
or not at all when the cut loses the tags that georeference the image).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# Classic and BigTIFF, both byte orders.
SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
TILE_TAGS = frozenset({322, 323, 324})  # TileWidth, TileLength, TileOffsets
# (offsets, byte counts) of the image's blocks: strips, or tiles.
_DATA_TAGS = ((273, 279), (324, 325))
_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8: the types offsets and counts use


@dataclass(frozen=True)
class Entry:
    kind: int  # the TIFF field type
    count: int
    inline: bytes  # the value itself when it fits, else the offset of the value


@dataclass(frozen=True)
class FirstDirectory:
    order: str  # struct byte order, "<" or ">"
    word: str  # struct format of counts and offsets: "I" (classic) or "Q" (BigTIFF)
    entries: dict[int, Entry]


def is_tiff(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            return stream.read(4) in SIGNATURES
    except OSError:
        return False


def _first_directory(stream: BinaryIO, size: int) -> FirstDirectory | str | None:
    """The first directory; a reason when it lies past the end of the file; None when the
    bytes are not a TIFF header."""
    header = stream.read(16)
    order = {b"II": "<", b"MM": ">"}.get(header[:2])
    if order is None or len(header) < 8:
        return None
    version = struct.unpack(f"{order}H", header[2:4])[0]
    # Classic: 2-byte entry count, 12-byte entries, 4-byte words; BigTIFF: 8, 20 and 8.
    if version == 42:
        (offset,) = struct.unpack(f"{order}I", header[4:8])
        count_format, entry_size, word = "H", 12, "I"
    elif version == 43 and len(header) == 16:
        (offset,) = struct.unpack(f"{order}Q", header[8:16])
        count_format, entry_size, word = "Q", 20, "Q"
    else:
        return None
    stream.seek(offset)
    raw_count = stream.read(struct.calcsize(count_format))
    if len(raw_count) < struct.calcsize(count_format):
        return f"its first directory starts at byte {offset}"
    (count,) = struct.unpack(f"{order}{count_format}", raw_count)
    raw = stream.read(count * entry_size) if count * entry_size <= size else b""
    if len(raw) < count * entry_size:
        return "its first directory is cut short"
    word_size = struct.calcsize(word)
    entries = {}
    for start in range(0, len(raw), entry_size):
        entry = raw[start : start + entry_size]
        tag, kind = struct.unpack(f"{order}HH", entry[:4])
        (number,) = struct.unpack(f"{order}{word}", entry[4 : 4 + word_size])
        entries[tag] = Entry(kind, number, entry[4 + word_size :])
    return FirstDirectory(order, word, entries)


def first_directory_tags(path: Path) -> frozenset[int]:
    """The tags of the first directory (empty when it cannot be read)."""
    with path.open("rb") as stream:
        directory = _first_directory(stream, path.stat().st_size)
    return frozenset(directory.entries) if isinstance(directory, FirstDirectory) else frozenset()


def _values(
    stream: BinaryIO, size: int, directory: FirstDirectory, tag: int
) -> tuple[int, ...] | None:
    """An array of offsets or counts; None when it cannot be read (an unexpected type, or
    stored past the end of the file)."""
    entry = directory.entries[tag]
    item = _TYPES.get(entry.kind)
    if item is None:
        return None
    length = entry.count * struct.calcsize(item)
    if length <= len(entry.inline):
        data = entry.inline[:length]
    else:
        (offset,) = struct.unpack(f"{directory.order}{directory.word}", entry.inline)
        if offset + length > size:
            return None
        stream.seek(offset)
        data = stream.read(length)
    return struct.unpack(f"{directory.order}{item * entry.count}", data)


def truncation(path: Path) -> str | None:
    """Why a TIFF is cut short or corrupt, from its first directory: the directory, or the
    image data it points at, ending past the end of the file. None when it is whole (sparse
    blocks, at offset 0, are fine) or not a TIFF."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        directory = _first_directory(stream, size)
        if not isinstance(directory, FirstDirectory):
            return None if directory is None else f"the file is {size} bytes, {directory}"
        for offsets_tag, counts_tag in _DATA_TAGS:
            if offsets_tag not in directory.entries or counts_tag not in directory.entries:
                continue
            offsets = _values(stream, size, directory, offsets_tag)
            counts = _values(stream, size, directory, counts_tag)
            if offsets is None or counts is None:
                return f"the file is {size} bytes, its list of image blocks is cut or corrupt"
            end = max((o + c for o, c in zip(offsets, counts, strict=False) if c), default=0)
            if end > size:
                return f"the file is {size} bytes, its image data runs to byte {end}"
    return None
