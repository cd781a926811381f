"""Unpack the downloaded files of a registry entry into resources/data/<id>/.

Every archive entry is checked before anything is written: absolute paths, `..` components,
links and device files are refused. Unpacking happens in a temporary folder that replaces
resources/data/<id>/ only when complete, with a marker recording the hashes of the files it was
made from; a folder without a matching marker (a killed run, a hand-made copy, a newer archive)
is redone, never trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from vcorr.data.fetch import files_to_use, verify
from vcorr.data.datasets import DataFile, Dataset, dataset
from vcorr.errors import VcorrError
from vcorr.io import atomic_dir, write_json

MARKER = ".vcorr-extracted.json"


def _checked_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise VcorrError(f"{archive}: refused: entry '{name}' has an absolute path")
    if ".." in path.parts:
        raise VcorrError(f"{archive}: refused: entry '{name}' would be written outside the destination")


def _zip_members(archive: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    for info in archive.infolist():
        _checked_name(info.filename, path)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise VcorrError(f"{path}: refused: entry '{info.filename}' is a symbolic link")
    return archive.infolist()


def _tar_members(archive: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    members = archive.getmembers()
    for member in members:
        _checked_name(member.name, path)
        if member.issym() or member.islnk():
            raise VcorrError(f"{path}: refused: entry '{member.name}' is a link")
        if not (member.isfile() or member.isdir()):
            raise VcorrError(f"{path}: refused: entry '{member.name}' is not a regular file or folder")
    return members


def _umask_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's "data" filter, with the archive's modes dropped: files and folders get the umask's
    (as zip extraction does), not a mode the publisher's machine happened to have."""
    return tarfile.data_filter(member, dest).replace(mode=None, deep=False)


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar (any compression) into `dest`, refusing unsafe entries up front."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as opened:
            members = _zip_members(opened, archive)
            for member in tqdm(members, desc=f"unpack {archive.name}", unit="file", file=sys.stderr):
                opened.extract(member, dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as opened:
            members = _tar_members(opened, archive)
            opened.extractall(dest, members=tqdm(members, desc=f"unpack {archive.name}", unit="file",
                                                 file=sys.stderr), filter=_umask_filter)
    else:
        raise VcorrError(f"{archive}: not a zip or tar archive")


def decode_video(video: Path, frames_dir: Path) -> int:
    """Every frame of `video` as `frames_dir/%05d.png`, numbered from 1 like JHMDB's own frames."""
    import av

    frames_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        with av.open(str(video)) as container:
            for count, frame in enumerate(container.decode(video=0), start=1):
                frame.to_image().save(frames_dir / f"{count:05d}.png")
    except av.error.FFmpegError as error:
        raise VcorrError(f"{video}: cannot decode ({error})") from None
    if count == 0:
        raise VcorrError(f"{video}: no video frames")
    return count


def videos_to_frames(videos_root: Path, frames_root: Path) -> int:
    """Decode every `<action>/<clip>.avi` under `videos_root` to `frames_root/<action>/<clip>/`."""
    videos = sorted(videos_root.rglob("*.avi"))
    if not videos:
        raise VcorrError(f"{videos_root}: no .avi clips found in the video archive")
    for video in tqdm(videos, desc="decode clips", unit="clip", file=sys.stderr):
        decode_video(video, frames_root / video.parent.name / video.stem)
    return len(videos)


def _flatten(folder: Path) -> None:
    """Move every file under `folder` to its top level (macOS `__MACOSX` metadata dropped)."""
    shutil.rmtree(folder / "__MACOSX", ignore_errors=True)
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.parent != folder:
            if (folder / path.name).exists():
                raise VcorrError(f"two files named {path.name} in the archive: cannot flatten it")
            os.replace(path, folder / path.name)
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            shutil.rmtree(path)


def _place(item: DataFile, source: Path, staging: Path) -> None:
    if item.type == "file":
        try:
            os.link(source, staging / item.name)  # same file system: no second copy of the bytes
        except OSError:
            shutil.copy2(source, staging / item.name)
    elif item.videos_to_frames:
        videos = staging / ".videos"
        unpack(source, videos)
        videos_to_frames(videos, staging / item.videos_to_frames)
        shutil.rmtree(videos)
    elif item.inner_archives:
        outer = staging / ".outer"
        unpack(source, outer)
        for inner in sorted(outer.rglob("*.tar")):
            unpack(inner, staging / item.inner_archives / inner.stem)
        shutil.rmtree(outer)
    else:
        unpack(source, staging)


def is_extracted(target: Path, hashes: dict[str, str]) -> bool:
    marker = target / MARKER
    try:
        return json.loads(marker.read_text()).get("files") == hashes
    except (OSError, ValueError):
        return False


def _link_derived(entry: Dataset, data_dir: Path) -> Path:
    """A derived set is a relative symbolic link to the folder of the set it comes from."""
    link = data_dir / entry.id
    if link.exists() and not link.is_symlink():
        shutil.rmtree(link)
    temporary = data_dir / f".{entry.id}.link.tmp"
    temporary.unlink(missing_ok=True)
    os.symlink(entry.derived_from, temporary)
    os.replace(temporary, link)
    return link


def _build_demo(target: Path, settings: dict) -> None:
    from vcorr.data.demo import build_from_settings

    print(build_from_settings(target, settings).line(), file=sys.stderr)


# `built_by` of config/datasets.yaml: writers of a set made from material installed with vcorr
# (no download), each given resources/data/<id>/ and the entry's `build` settings.
BUILDERS = {"demo": _build_demo}


def extract(dataset_id: str, downloads: Path, data_dir: Path, force: bool = False) -> Path:
    """resources/data/<id>/ from the verified files in resources/downloads/<id>/ (or written by
    the entry's builder); its path."""
    entry = dataset(dataset_id)
    downloads, data_dir = Path(downloads), Path(data_dir)
    if entry.built_by:
        if entry.built_by not in BUILDERS:
            raise VcorrError(f"config/datasets.yaml: {dataset_id}: built_by '{entry.built_by}' is not one of "
                             f"{', '.join(BUILDERS)}")
        BUILDERS[entry.built_by](data_dir / entry.id, dict(entry.build))
        return data_dir / entry.id
    if entry.derived_from:
        extract(entry.derived_from, downloads, data_dir, force)
        return _link_derived(entry, data_dir)
    folder = downloads / entry.id
    items = [item for item in files_to_use(entry, folder) if item.required or (folder / item.name).is_file()]
    absent = [folder / item.name for item in items if not (folder / item.name).is_file()]
    if absent:
        if entry.manual:
            raise VcorrError(entry.where_to_get(downloads))
        raise VcorrError(f"missing {', '.join(map(str, absent))}: run `vcorr data fetch {dataset_id}` first "
                         "(or place the files there by hand)")
    hashes = {item.name: verify(folder / item.name, item.expected_sha256, archive=item.type == "archive")
              for item in items}
    target = data_dir / entry.id
    if not force and is_extracted(target, hashes):
        print(f"{target} is up to date", file=sys.stderr)
        return target
    for leftover in data_dir.glob(f".{entry.id}.*.tmp"):  # from a run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    with atomic_dir(target) as staging:
        for item in items:
            _place(item, folder / item.name, staging)
        if entry.flatten:
            _flatten(staging)
        write_json(staging / MARKER, {"id": entry.id, "files": hashes})
    return target
