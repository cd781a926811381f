"""File helpers every stage shares: atomic writes and DAVIS-style indexed PNGs.

Outputs are always written under a temporary name next to their destination and renamed into
place once complete, so an interrupted or failed step never leaves a half-written file or folder
that a later run (or Snakemake) could mistake for a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vcorr.errors import VcorrError


def _voc_palette() -> list[int]:
    """The PASCAL VOC / DAVIS colour map: bits of the index spread over R, G and B."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((red, green, blue))
    return palette


DAVIS_PALETTE: list[int] = _voc_palette()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (archives and checkpoints are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | os.PathLike, data) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """An indexed (palette) or greyscale PNG as a `[H, W]` uint8 map of ids.

    RGB images are refused: their colours are not ids, and guessing a mapping would silently
    change scores.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise VcorrError(f"{path}: a {image.mode} image, not an indexed (palette) PNG of ids")
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise VcorrError(f"{path}: missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise VcorrError(f"{path}: unreadable PNG ({error})") from None


def write_index_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write a `[H, W]` uint8 id map as an indexed PNG with the DAVIS palette, atomically."""
    ids = np.ascontiguousarray(ids, dtype=np.uint8)
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
    image.putpalette(DAVIS_PALETTE)
    with atomic_file(path) as temporary:
        image.save(temporary, format="PNG")
