"""One reader per file kind of the benchmarks, used by indexing, propagation and every scorer.

- plain lists (DAVIS ImageSets, VIP's val_videos.txt, the lists vcorr ships in config/lists/),
- the seeds-format JHMDB split (`<.../joint_positions/<action>/<clip>/joint_positions.mat>
  <.../Rename_Images/<action>/<clip>>` per line),
- JHMDB's `joint_positions.mat` (`pos_img`, 1-based as JHMDB ships it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vcorr.config import config_file
from vcorr.errors import VcorrError

JHMDB_JOINTS = 15


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise VcorrError(f"{path}: missing ({what})")
    return path


def read_names(list_file: Path, what: str = "sequence list") -> list[str]:
    """Non-empty stripped lines of a plain list file, order kept."""
    require(Path(list_file), what)
    return [line.strip() for line in Path(list_file).read_text().splitlines() if line.strip()]


def preferred_list(root: Path, video_list: str | None, split_list: str | None) -> Path:
    """`<root>/<video_list>` when present (the official list), else the shipped `config/<split_list>`."""
    if video_list and (Path(root) / video_list).is_file():
        return Path(root) / video_list
    if split_list:
        return config_file(split_list, "list shipped with vcorr in config/")
    return require(Path(root) / (video_list or ""), "video list")


def davis_image_set(root: Path, subset: str, year: int) -> Path:
    """DAVIS's `ImageSets/<year>/<subset>.txt`, as the official tools name it."""
    return Path(root) / "ImageSets" / str(year) / f"{subset}.txt"


def jhmdb_split_clips(list_file: Path) -> list[str]:
    """`<action>/<clip>` names of a seeds-format JHMDB split, in list order.

    The seeds prefix both paths with their own folder (e.g. `JHMDB/`); only the part from
    `Rename_Images/` on is kept, so the list works for any root.
    """
    clips = []
    for number, line in enumerate(read_names(list_file, "JHMDB split list"), start=1):
        frames_dir = line.split()[-1].rstrip("/")
        marker = "Rename_Images/"
        if marker not in frames_dir:
            raise VcorrError(f"{list_file}:{number}: expected '<mat path> <.../Rename_Images/<action>/<clip>>'")
        clips.append(frames_dir.split(marker, 1)[1])
    return clips


def jhmdb_joints_file(root: Path, clip: str) -> Path:
    return Path(root) / "joint_positions" / clip / "joint_positions.mat"


def read_joint_positions(path: str | os.PathLike) -> np.ndarray:
    """Ground-truth `[2, 15, T]` (x, y) float64 of a clip, 0-based (JHMDB ships them 1-based)."""
    import scipy.io

    if not Path(path).is_file():
        raise VcorrError(f"{path}: missing")
    try:
        positions = np.asarray(scipy.io.loadmat(str(path))["pos_img"], dtype=np.float64)
    except KeyError:
        raise VcorrError(f"{path}: not a JHMDB joint_positions.mat: no 'pos_img' array") from None
    except (ValueError, TypeError, OSError) as error:
        raise VcorrError(f"{path}: unreadable .mat file ({error})") from None
    if positions.ndim != 3 or positions.shape[:2] != (2, JHMDB_JOINTS) or positions.shape[2] < 1:
        raise VcorrError(f"{path}: pos_img has shape {positions.shape}, expected [2, {JHMDB_JOINTS}, T]")
    return positions - 1
