"""File helpers every stage shares: atomic writes and DAVIS-style indexed PNGs.

Outputs are always written under a temporary name next to their destination and renamed into
place once complete, so an interrupted or failed step never leaves a half-written file or folder
that a later run (or Snakemake) could mistake for a result. What is renamed into place gets the
mode a plain open()/mkdir() would give it (`apply_umask`), so results in a shared cache are as
readable as the user's umask allows, not private to whoever made them.
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


def process_umask() -> int:
    """The process umask, read without changing it where Linux shows it in /proc/self/status.

    os.umask can only read it by setting it; setting and restoring it races file creation in other
    threads, so the fallback sets the most private mask meanwhile (never a permissive one).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give `path` the mode open() or mkdir() would: 0o666 (file) or 0o777 (folder) less the umask.

    mkstemp and mkdtemp create 0600 and 0700 whatever the umask; everything they make is renamed
    into place through this, so lab-mates sharing a dataset cache or a results folder can read it.
    """
    default = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, default & ~process_umask())


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
        apply_umask(temporary)  # after the block: a writer may have replaced or copied onto it
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
        apply_umask(temporary)
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def require_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as an existing folder, else an error saying it is missing or not a folder."""
    path = Path(path)
    if not path.exists():
        raise VcorrError(f"{what} {path}: missing")
    if not path.is_dir():
        raise VcorrError(f"{what} {path}: not a folder")
    return path


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> None:
    """Refuse, before anything is written, an output `path` that cannot be made: it (for a
    file output) is a folder or (for a folder output) a file, or its nearest existing parent is a
    file or not writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise VcorrError(f"{what} {path}: {'a file, not a folder' if folder else 'a folder, not a file'}")
    parent = next((ancestor for ancestor in Path(os.path.abspath(path)).parents if ancestor.exists()), None)
    if parent is not None and not parent.is_dir():
        raise VcorrError(f"{what} {path}: cannot be created, {parent} is a file")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK) and not path.exists():
        raise VcorrError(f"{what} {path}: cannot be created, {parent} is not writable")


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
