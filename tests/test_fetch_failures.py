"""`vcorr data fetch` without a network, and archives that are corrupt or cut short.

An unreachable server fails at once (no back-off loop) saying where to place the file by hand and
how to use a mirror; a timeout or a dropped transfer is still retried; a `.part` file is mentioned
only when there is one. Archives are structure-checked when downloaded and when placed by hand,
so a corrupt one is refused by fetch, named, before anything is extracted.
"""

from __future__ import annotations

import gzip
import io
import socket
import tarfile
import time
from pathlib import Path

import pytest
from test_data_pipeline import (  # noqa: F401 (server: a fixture)
    FAST, cli, fetch_through_dropping_server, jpeg_bytes, server, serve, tar_bytes, zip_bytes,
)

import vcorr.data.fetch

DAVIS_ZIP = Path("resources/downloads/davis17/DAVIS-2017-trainval-480p.zip")


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The back-off waits fetch asks for (not slept): one per retry."""
    waits: list[float] = []
    monkeypatch.setattr(vcorr.data.fetch.time, "sleep", waits.append)
    return waits


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Run from an empty folder (the default resources/downloads) with no proxy in the way."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed on exit: nothing listens there


def assert_hints(error: str, target: Path) -> None:
    assert f"place it at {target}" in error
    assert "--mirror" in error and "VCORR_MIRROR" in error


@pytest.mark.parametrize("mirror", [f"http://127.0.0.1:{closed_port()}", "http://nohost.invalid"],
                         ids=["connection-refused", "unresolvable-host"])
def test_unreachable_server_fails_at_once_with_both_hints(offline, sleeps, capsys, mirror):
    start = time.monotonic()
    assert cli("fetch", "davis17", "--mirror", mirror) == 2  # the default retry policy: 6 attempts
    elapsed = time.monotonic() - start
    error = capsys.readouterr().err
    assert sleeps == [] and "retrying" not in error and elapsed < 20
    assert "cannot reach the server" in error
    assert_hints(error, DAVIS_ZIP)
    assert ".part" not in error and not list(Path("resources").rglob("*.part"))


def test_timeout_is_retried_and_no_part_is_claimed(offline, sleeps, capsys):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mirror = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert cli("fetch", "davis17", "--mirror", mirror, "--retries", "3", "--timeout", "0.2") == 2
    error = capsys.readouterr().err
    assert len(sleeps) == 2 and "failed after 3 attempts" in error and "timed out" in error
    assert_hints(error, DAVIS_ZIP)
    assert ".part" not in error


def test_dropped_transfer_given_up_names_the_kept_part(tmp_path, server, capsys):
    downloads, body, path = fetch_through_dropping_server(server, tmp_path)
    error = capsys.readouterr().err
    part = downloads / "crw" / "pretrained.pth.part"
    assert part.is_file() and f"{part} ({part.stat().st_size} bytes) is kept" in error
    assert_hints(error, downloads / "crw" / "pretrained.pth")
    server.drops_left[path] = 0
    assert cli("fetch", "crw", "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    assert (downloads / "crw" / "pretrained.pth").read_bytes() == body and not part.exists()


# ---------------------------------------------------------------- corrupt archives

PAYLOAD = bytes(range(256)) * 64


def davis_like_zip() -> bytes:
    return zip_bytes({"DAVIS/ImageSets/2017/val.txt": b"bmx\n", "DAVIS/JPEGImages/480p/bmx/00000.jpg": PAYLOAD})


def flipped(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]


def voc_tar() -> bytes:
    return tar_bytes({"VOCdevkit/VOC2012/JPEGImages/1.jpg": PAYLOAD, "VOCdevkit/VOC2012/JPEGImages/2.jpg": PAYLOAD})


@pytest.mark.parametrize(
    ("dataset_id", "archive_name", "build", "problem"),
    [
        ("davis17", "DAVIS-2017-trainval-480p.zip", lambda: davis_like_zip()[:-100], "central directory"),
        ("davis17", "DAVIS-2017-trainval-480p.zip",
         lambda: flipped(davis_like_zip(), davis_like_zip().find(PAYLOAD) + 1000), "00000.jpg' is corrupt"),
        ("voc", "VOCtrainval_11-May-2012.tar", lambda: voc_tar()[:512 + 4000], "unexpected end of data"),
        # Cut right after the first member: a tar reader would stop there without complaint.
        ("voc", "VOCtrainval_11-May-2012.tar", lambda: voc_tar()[:512 + len(PAYLOAD)], "end-of-archive block"),
    ],
    ids=["zip-truncated", "zip-crc", "tar-truncated-in-member", "tar-truncated-between-members"],
)
def test_corrupt_archive_placed_by_hand_refused_by_fetch(tmp_path, capsys, dataset_id, archive_name, build, problem):
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    placed = downloads / dataset_id / archive_name
    placed.parent.mkdir(parents=True)
    placed.write_bytes(build())
    assert cli("fetch", dataset_id, "--dest", downloads) == 2
    error = capsys.readouterr().err
    assert f"{placed}: refused" in error and problem in error
    assert not placed.with_name(archive_name + ".sha256").exists()  # never recorded as good
    assert cli("extract", dataset_id, "--downloads", downloads, "--dest", data) == 2
    assert f"{placed}: refused" in capsys.readouterr().err
    assert not data.exists() or not any(data.iterdir())


def test_intact_archives_pass_the_structure_check(tmp_path):
    for name, body in [("a.zip", davis_like_zip()), ("b.tar", voc_tar()), ("c.tar.gz", gzip.compress(voc_tar()))]:
        (tmp_path / name).write_bytes(body)
        assert vcorr.data.fetch.archive_problem(tmp_path / name) is None, name


def test_compressed_tar_cut_short_or_corrupt(tmp_path):
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as archive:
        for number in range(4):  # incompressible-ish data so that a cut lands inside a member
            info = tarfile.TarInfo(f"Rename_Images/clip/{number:05d}.png")
            data = bytes((number * 7919 + index * 104729) % 251 for index in range(20_000))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    body = packed.getvalue()
    cut, damaged = tmp_path / "cut.tar.gz", tmp_path / "damaged.tar.gz"
    cut.write_bytes(body[: len(body) * 2 // 3])
    damaged.write_bytes(body[:-8] + bytes(8))  # the gzip trailer: CRC-32 and length
    assert vcorr.data.fetch.archive_problem(cut) and vcorr.data.fetch.archive_problem(damaged)


def test_compressed_tar_placed_by_hand_refused_by_fetch(tmp_path, capsys):
    downloads = tmp_path / "downloads"
    (downloads / "jhmdb").mkdir(parents=True)
    (downloads / "jhmdb" / "joint_positions.zip").write_bytes(zip_bytes({"joint_positions/a/b/joint_positions.mat": b"m"}))
    frames = gzip.compress(tar_bytes({f"Rename_Images/a/b/{n:05d}.png": PAYLOAD * 4 for n in range(1, 4)}))
    placed = downloads / "jhmdb" / "Rename_Images.tar.gz"
    placed.write_bytes(frames[: len(frames) // 2])
    assert cli("fetch", "jhmdb", "--dest", downloads) == 2
    assert f"{placed}: refused" in capsys.readouterr().err


def test_corrupt_download_refused_and_deleted(tmp_path, server, capsys):
    """No sha256 in the registry: the structure check alone catches a corrupted transfer."""
    body = davis_like_zip()
    serve(server, "davis17", {"DAVIS-2017-trainval-480p.zip": body})
    server.modes[next(iter(server.routes))] = "corrupt"  # flips the middle byte: inside the image
    assert body.find(PAYLOAD) < len(body) // 2 < body.find(PAYLOAD) + len(PAYLOAD)
    downloads = tmp_path / "downloads"
    assert cli("fetch", "davis17", "--dest", downloads, "--mirror", server.mirror, *FAST) == 2
    error = capsys.readouterr().err
    assert "downloaded archive is refused and deleted" in error and "00000.jpg' is corrupt" in error
    assert not any((downloads / "davis17").iterdir())
    server.modes.clear()  # a good copy is then accepted and its measured hash recorded
    assert cli("fetch", "davis17", "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    assert (downloads / "davis17" / "DAVIS-2017-trainval-480p.zip.sha256").is_file()
