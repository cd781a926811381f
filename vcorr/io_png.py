"""Fast decoding of the plain indexed PNGs that segmentation masks almost always are.

Scoring decodes thousands of masks, and Pillow spends about twice the time of the inflation itself
on each (opening, unfiltering, copying into numpy). Masks written by Pillow, OpenCV or the DAVIS
tools are 8-bit palette or greyscale, not interlaced, with every row unfiltered: their ids are the
inflated bytes minus one filter byte per row, returned as a view of them (no copy). Anything else
(other bit depths or colour types, filtered rows, damaged files) goes to `vcorr.io.read_index_png`,
which decodes it with Pillow or refuses it with the file name, so both paths return the same ids.

Inflating is most of the cost: libdeflate (the `deflate` package) inflates a DAVIS mask 4x faster
than ISA-L and 5x faster than zlib (0.07 / 0.29 / 0.38 ms for 2.5 KB into 437 KB; 2.4x ISA-L on
noisy masks; `benchmarks/score_davis.py`), with the same checksum check. zlib is the fallback.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from vcorr.io import read_index_png

try:
    from deflate import DeflateError as _InflateError
    from deflate import zlib_decompress as _inflate  # the output's size given, it fills one buffer
except ImportError:  # pragma: no cover - deflate is a dependency, zlib a safe fallback
    _InflateError = zlib.error

    def _inflate(data: bytes, size: int) -> bytes:
        return zlib.decompress(data, bufsize=size)

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREYSCALE, _PALETTE = 0, 3


def _plain_png_ids(data: bytes) -> np.ndarray | None:
    """The `[H, W]` ids of a plain 8-bit indexed/greyscale PNG, or None for any other file."""
    if not data.startswith(_SIGNATURE):
        return None
    position, idat, header = len(_SIGNATURE), [], None
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        body = data[position + 8 : position + 8 + length]
        if len(body) != length:
            return None
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body) if length == 13 else None
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    else:
        return None
    if header is None or not idat:
        return None
    width, height, bit_depth, colour_type, _, _, interlace = header
    if bit_depth != 8 or colour_type not in (_GREYSCALE, _PALETTE) or interlace != 0:
        return None
    size = height * (width + 1)
    try:
        raw = _inflate(b"".join(idat), size)
    except _InflateError:  # damaged, or inflating to another size
        return None
    if len(raw) != size:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)
    if rows[:, 0].any():  # some row uses a PNG filter: leave it to Pillow
        return None
    if isinstance(raw, bytes):  # zlib's output is read-only
        return rows[:, 1:].copy()
    return rows[:, 1:]


def read_ids(path: str | os.PathLike) -> np.ndarray:
    """Same result as `vcorr.io.read_index_png(path)` (writable uint8 `[H, W]`), faster. Its rows
    may lie apart in memory (a view of the inflated rows, past their filter bytes)."""
    try:
        with open(path, "rb") as handle:
            ids = _plain_png_ids(handle.read())
    except OSError:
        ids = None
    return read_index_png(path) if ids is None else ids
