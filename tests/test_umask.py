"""Outputs keep the user's umask: readable by lab-mates sharing a dataset cache or a results folder.

mkstemp/mkdtemp (behind atomic_file/atomic_dir) create 0600/0700; what is renamed into place must
instead have the mode a plain open()/mkdir() gives: 0666/0777 less the umask. Each test runs under
umask 022 and 027, set here and restored after.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from test_data_pipeline import FAST, cli, jpeg_bytes, server, serve, zip_bytes  # noqa: F401 (fixture)

from vcorr.io import atomic_dir, atomic_file, write_json


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request, tmp_path):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_modes(root: Path, mask: int) -> int:
    """Every file and folder from `root` down (root included) has the umask's mode; their count."""
    paths = [root, *root.rglob("*")]
    for path in paths:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert mode(path) == expected, f"{path}: mode {mode(path):o}, expected {expected:o}"
    return len(paths)


def test_atomic_file_and_atomic_dir(tmp_path, umask):
    with atomic_file(tmp_path / "out" / "scores.csv") as temporary:
        temporary.write_text("a,b\n")
    write_json(tmp_path / "out" / "scores.json", {"J": 1.0})
    # A writer that puts a private file in place of the temporary (a copy keeping its source's mode).
    private = tmp_path / "private.bin"
    private.write_bytes(b"x")
    private.chmod(0o600)
    with atomic_file(tmp_path / "out" / "copied.bin") as temporary:
        shutil.copy(private, temporary)
    with atomic_dir(tmp_path / "out" / "predictions") as temporary:
        (temporary / "bike").mkdir()
        (temporary / "bike" / "00000.png").write_bytes(b"png")
    assert assert_modes(tmp_path / "out", umask) == 7


def _tar_with_private_modes(entries: dict[str, bytes]) -> bytes:
    """A tar whose members carry the modes of a publisher who made them private (0600 / 0700)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        folders = sorted({str(Path(name).parent) for name in entries})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o700
            archive.addfile(info)
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("dataset_id", "archive_name", "build"),
    [
        ("msra10k", "MSRA10K_Imgs_GT.zip", lambda: zip_bytes({"MSRA10K_Imgs_GT/Imgs/1.jpg": jpeg_bytes()})),
        ("voc", "VOCtrainval_11-May-2012.tar",
         lambda: _tar_with_private_modes({"VOCdevkit/VOC2012/JPEGImages/1.jpg": jpeg_bytes()})),
    ],
)
def test_extraction(tmp_path, umask, dataset_id, archive_name, build):
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    (downloads / dataset_id).mkdir(parents=True)
    (downloads / dataset_id / archive_name).write_bytes(build())
    assert cli("extract", dataset_id, "--downloads", downloads, "--dest", data) == 0
    assert assert_modes(data / dataset_id, umask) >= 4  # the set's folder, nested folders, image, marker
    assert mode(downloads / dataset_id / f"{archive_name}.sha256") == 0o666 & ~umask


def test_fetch_from_local_server_then_extract(tmp_path, umask, server):  # noqa: F811 (fixture)
    names = ["hvc_coco.pth", "hvc_voc.pth"]
    serve(server, "hvc_release", {"releases_models.zip": zip_bytes({f"releases_models/{n}": n.encode() for n in names})})
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    assert cli("fetch", "hvc_release", "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    assert cli("extract", "hvc_release", "--downloads", downloads, "--dest", data) == 0
    # downloads/, downloads/hvc_release/, the archive, its sidecar
    assert assert_modes(downloads, umask) == 4
    # data/, data/hvc_release/, two weight files, the marker
    assert assert_modes(data, umask) == 5
