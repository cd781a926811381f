"""`vcorr data fetch -> extract -> index` against a local HTTP server serving small archives.

The archives are built here with each dataset's real internal layout; the server (127.0.0.1,
started by the fixture) honours Range requests and can drop a connection mid-file or serve
corrupted bytes. The registry is the real config/datasets.yaml, with only the expected counts
(and, for the checksum test, a sha256) overridden to fit the small archives.
"""

from __future__ import annotations

import copy
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import scipy.io
import yaml
from PIL import Image

from vcorr.cli import main
from vcorr.data.extract import MARKER, decode_video
from vcorr.data.index import read_index
from vcorr.data.benchmarks import benchmark
from vcorr.data.readers import jhmdb_split_clips
from vcorr.config import load_registry

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"
FAST = ["--retries", "4", "--backoff", "0.01", "--timeout", "10"]


# ---------------------------------------------------------------- local HTTP server


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        server: _Server = self.server
        requested_range = self.headers.get("Range")
        server.requests.append((self.path, requested_range))
        body = server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        mode = server.modes.get(self.path)
        if mode == "corrupt":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        start = int(requested_range.removeprefix("bytes=").split("-")[0]) if requested_range else 0
        if start >= len(body) and requested_range:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if requested_range else 200)
        if requested_range:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if mode == "drop" and server.drops_left.get(self.path, 0) > 0:
            server.drops_left[self.path] -= 1
            payload = payload[: len(payload) // 2]  # then the connection closes: a short body
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    routes: dict[str, bytes]
    modes: dict[str, str]
    drops_left: dict[str, int]
    requests: list[tuple[str, str | None]]


@pytest.fixture
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.modes, httpd.drops_left, httpd.requests = {}, {}, {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.mirror = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve(server: _Server, dataset_id: str, files: dict[str, bytes]) -> None:
    """Serve each file at the path of its real URL in the registry (the mirror swaps the host)."""
    entry = load_registry("datasets")[dataset_id]
    urls = {item["name"]: item["url"] for item in entry["files"]}
    for name, body in files.items():
        server.routes[urlsplit(urls[name]).path] = body


# ---------------------------------------------------------------- registry override


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Point vcorr at a copy of config/ whose datasets.yaml carries the given overrides."""
    calls = []

    def override(changes: dict) -> None:
        data = yaml.safe_load((REPO_CONFIG / "datasets.yaml").read_text())
        _merge(data, changes)
        folder = tmp_path / f"config{len(calls)}"  # a new path per call: registries are cached by path
        folder.mkdir()
        (folder / "lists").symlink_to(REPO_CONFIG / "lists")
        # Indexing a benchmark's split reads its root and layout from the real benchmarks.yaml.
        (folder / "benchmarks.yaml").symlink_to(REPO_CONFIG / "benchmarks.yaml")
        (folder / "datasets.yaml").write_text(yaml.safe_dump(data))
        monkeypatch.setenv("VCORR_CONFIG_DIR", str(folder))
        calls.append(folder)

    return override


def _merge(base: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


# ---------------------------------------------------------------- archive builders


def jpeg_bytes(height: int = 6, width: int = 8, value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def label_bytes(ids: list[int], height: int = 6, width: int = 8) -> bytes:
    label = np.zeros((height, width), np.uint8)
    for column, object_id in enumerate(ids):
        label[0, column] = object_id
    buffer = io.BytesIO()
    Image.fromarray(label, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(entries: dict[str, bytes], mode: str = "w", links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return buffer.getvalue()


def davis_zip(sets: dict[str, list[str]], objects: dict[str, list[int]], frames: int, all_labels: bool = True) -> bytes:
    entries = {f"DAVIS/ImageSets/{name}": "\n".join(seqs).encode() + b"\n" for name, seqs in sets.items()}
    for seq in {seq for seqs in sets.values() for seq in seqs}:
        for number in range(frames):
            entries[f"DAVIS/JPEGImages/480p/{seq}/{number:05d}.jpg"] = jpeg_bytes(value=number)
            if all_labels or number == 0:
                entries[f"DAVIS/Annotations/480p/{seq}/{number:05d}.png"] = label_bytes(objects[seq])
    return zip_bytes(entries)


def avi_bytes(path: Path, frames: int, height: int = 48, width: int = 64) -> bytes:
    import av

    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for number in range(frames):
            image = np.full((height, width, 3), 30 * number, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def mat_bytes(frames: int) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"pos_img": np.ones((2, 15, frames))})
    return buffer.getvalue()


def cli(*args: str) -> int:
    return main(["data", *map(str, args)])


def run_all(dataset_id: str, tmp_path: Path, server: _Server, *index_args: str) -> Path:
    downloads, data, out = tmp_path / "downloads", tmp_path / "data", tmp_path / "index" / f"{dataset_id}.csv"
    assert cli("fetch", dataset_id, "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    assert cli("extract", dataset_id, "--downloads", downloads, "--dest", data) == 0
    assert cli("index", dataset_id, "--data", data, "--out", out, *index_args) == 0
    return out


# ---------------------------------------------------------------- fetch -> extract -> index


def test_davis17_and_derived_davis16(tmp_path, server, registry):
    registry({"davis17": {"index": {"val": {"expect": {"sequences": 2, "frames": 6, "objects": 3}},
                                     "val2016": {"expect": {"sequences": 1, "frames": 3, "objects": 1}}}},
              "davis16": {"index": {"val": {"expect": {"sequences": 1, "frames": 3, "objects": 1}}}}})
    sets = {"2017/train.txt": ["bear"], "2017/val.txt": ["bmx", "dogs"], "2016/val.txt": ["bmx"], "2016/train.txt": ["bear"]}
    serve(server, "davis17", {"DAVIS-2017-trainval-480p.zip": davis_zip(sets, {"bmx": [1], "dogs": [1, 2], "bear": [1]}, 3)})
    table = read_index(run_all("davis17", tmp_path, server))
    data = tmp_path / "data" / "davis17" / "DAVIS"
    val = table[table.split == "val"]
    assert val.sequence.tolist() == ["bmx"] * 3 + ["dogs"] * 3
    assert val.frame.tolist() == ["00000", "00001", "00002"] * 2
    assert val.image.tolist()[4] == str(data / "JPEGImages/480p/dogs/00001.jpg")
    assert val.annotation.tolist()[4] == str(data / "Annotations/480p/dogs/00001.png")
    assert val.objects.tolist() == [1] * 3 + [2] * 3 and (val.height == 6).all() and (val.width == 8).all()
    assert table[table.split == "val2016"].sequence.tolist() == ["bmx"] * 3
    # davis16 has no download: it links to davis17's folder.
    assert cli("fetch", "davis16", "--dest", tmp_path / "downloads", "--mirror", server.mirror, *FAST) == 0
    assert cli("extract", "davis16", "--downloads", tmp_path / "downloads", "--dest", tmp_path / "data") == 0
    assert (tmp_path / "data" / "davis16").resolve() == (tmp_path / "data" / "davis17").resolve()
    assert cli("index", "davis16", "--data", tmp_path / "data", "--out", tmp_path / "d16.csv") == 0
    assert read_index(tmp_path / "d16.csv").sequence.unique().tolist() == ["bmx"]


def test_davis17dev_counts_checked_against_registry(tmp_path, server, registry, capsys):
    registry({"davis17dev": {"index": {"test-dev": {"expect": {"sequences": 1, "frames": 2}}}}})
    serve(server, "davis17dev", {"DAVIS-2017-test-dev-480p.zip": davis_zip(
        {"2017/test-dev.txt": ["aerobatics"]}, {"aerobatics": [1, 2, 3]}, 2, all_labels=False)})
    table = read_index(run_all("davis17dev", tmp_path, server))
    assert table.annotation.str.endswith(".png").tolist() == [True, False] and table.objects.tolist() == [3, 3]
    # The real registry expects the full 30 sequences and 2,086 frames: refused, nothing written.
    registry({})
    out = tmp_path / "full.csv"
    assert cli("index", "davis17dev", "--data", tmp_path / "data", "--out", out) == 2
    error = capsys.readouterr().err
    assert "1 sequences, expected 30" in error and "2 frames, expected 2086" in error and not out.exists()
    assert cli("index", "davis17dev", "--data", tmp_path / "data", "--out", out, "--allow-partial") == 0
    assert len(read_index(out)) == 2


@pytest.fixture(scope="module")
def jhmdb_clips() -> list[str]:
    return jhmdb_split_clips(benchmark("jhmdb").split_list_path())[:2]


def test_jhmdb_frames_decoded_from_videos_when_frame_archive_absent(tmp_path, server, jhmdb_clips, capsys):
    videos = {f"ReCompress_Videos/{clip}.avi": avi_bytes(tmp_path / f"{n}.avi", 3 + n) for n, clip in enumerate(jhmdb_clips)}
    joints = {f"joint_positions/{clip}/joint_positions.mat": mat_bytes(3 + n) for n, clip in enumerate(jhmdb_clips)}
    # Rename_Images.tar.gz is not served (404): the optional frame archive is skipped.
    serve(server, "jhmdb", {"JHMDB_video.zip": zip_bytes(videos), "joint_positions.zip": zip_bytes(joints)})
    # The split lists 268 clips and the archives hold 2: indexed with the gap reported.
    table = read_index(run_all("jhmdb", tmp_path, server, "--allow-partial"))
    error = capsys.readouterr().err
    assert "optional Rename_Images.tar.gz not fetched" in error and "val: 266 listed sequences missing" in error
    root = tmp_path / "data" / "jhmdb"
    assert table.sequence.unique().tolist() == jhmdb_clips
    assert table.frame.tolist() == ["00001", "00002", "00003", "00001", "00002", "00003", "00004"]
    assert table.annotation.tolist()[0] == str(root / "joint_positions" / jhmdb_clips[0] / "joint_positions.mat")
    assert (table.height == 48).all() and (table.width == 64).all()
    assert not (root / ".videos").exists() and not list(root.rglob("*.avi"))


def test_jhmdb_frame_archive_preferred_over_videos(tmp_path, server, jhmdb_clips):
    clip = jhmdb_clips[0]
    frames = {f"Rename_Images/{clip}/{n:05d}.png": label_bytes([]) for n in (1, 2)}
    serve(server, "jhmdb", {"Rename_Images.tar.gz": tar_bytes(frames, "w:gz"),
                            "joint_positions.zip": zip_bytes({f"joint_positions/{clip}/joint_positions.mat": mat_bytes(2)})})
    table = read_index(run_all("jhmdb", tmp_path, server, "--allow-partial"))
    assert table.frame.tolist() == ["00001", "00002"]
    assert not any("JHMDB_video" in path for path, _ in server.requests)


def test_decode_video_numbers_frames_from_one(tmp_path):
    avi_bytes(tmp_path / "clip.avi", 7)
    assert decode_video(tmp_path / "clip.avi", tmp_path / "frames") == 7
    assert sorted(path.name for path in (tmp_path / "frames").iterdir()) == [f"{n:05d}.png" for n in range(1, 8)]
    assert Image.open(tmp_path / "frames" / "00007.png").size == (64, 48)


@pytest.mark.parametrize(
    ("dataset_id", "archive", "entries", "expected_images"),
    [
        ("coco", "train2017.zip", {"train2017/000000000009.jpg": 0, "train2017/000000000025.jpg": 0}, 2),
        ("msra10k", "MSRA10K_Imgs_GT.zip", {"MSRA10K_Imgs_GT/Imgs/75.jpg": 0, "MSRA10K_Imgs_GT/Imgs/75.png": 1}, 1),
        ("voc", "VOCtrainval_11-May-2012.tar", {"VOCdevkit/VOC2012/JPEGImages/2007_000027.jpg": 0,
                                                "VOCdevkit/VOC2012/Annotations/2007_000027.xml": 1}, 1),
    ],
)
def test_image_collections(tmp_path, server, registry, dataset_id, archive, entries, expected_images):
    split = next(iter(load_registry("datasets")[dataset_id]["index"]))
    registry({dataset_id: {"index": {split: {"expect": {"frames": expected_images}}}}})
    files = {name: jpeg_bytes() if kind == 0 else b"other" for name, kind in entries.items()}
    serve(server, dataset_id, {archive: tar_bytes(files) if archive.endswith(".tar") else zip_bytes(files)})
    table = read_index(run_all(dataset_id, tmp_path, server))
    jpegs = sorted(name for name, kind in entries.items() if kind == 0)
    assert table.image.tolist() == [str(tmp_path / "data" / dataset_id / name) for name in jpegs]
    assert (table.split == split).all() and (table.height == 6).all()


@pytest.mark.parametrize("dataset_id", ["moco_v1_200ep", "moco_v2_800ep", "crw"])
def test_weight_files(tmp_path, server, dataset_id, monkeypatch):
    name = load_registry("datasets")[dataset_id]["files"][0]["name"]
    serve(server, dataset_id, {name: b"weights of " + dataset_id.encode()})
    monkeypatch.setenv("VCORR_MIRROR", server.mirror)  # the environment variable instead of --mirror
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    assert cli("fetch", dataset_id, "--dest", downloads, *FAST) == 0
    assert cli("extract", dataset_id, "--downloads", downloads, "--dest", data) == 0
    assert (data / dataset_id / name).read_bytes() == b"weights of " + dataset_id.encode()
    assert cli("index", dataset_id, "--data", data, "--out", tmp_path / "w.csv") == 0
    assert read_index(tmp_path / "w.csv").file.tolist() == [name]


def test_hvc_release_flattened(tmp_path, server):
    names = ["hvc_coco.pth", "hvc_voc.pth", "hvc_msra.pth", "hvc_ytb.pth"]
    archive = {f"releases_models/{name}": name.encode() for name in names}
    archive["__MACOSX/releases_models/._hvc_coco.pth"] = b"resource fork"
    serve(server, "hvc_release", {"releases_models.zip": zip_bytes(archive)})
    table = read_index(run_all("hvc_release", tmp_path, server))
    folder = tmp_path / "data" / "hvc_release"
    assert sorted(path.name for path in folder.iterdir()) == sorted(names + [MARKER])
    assert table.file.tolist() == names and (folder / "hvc_voc.pth").read_bytes() == b"hvc_voc.pth"


# ---------------------------------------------------------------- faults


def test_dropped_connection_resumes_with_range(tmp_path, server):
    body = zip_bytes({f"releases_models/{name}": bytes(range(256)) * 400 for name in ["hvc_coco.pth", "hvc_voc.pth"]})
    serve(server, "hvc_release", {"releases_models.zip": body})
    path = urlsplit(load_registry("datasets")["hvc_release"]["files"][0]["url"]).path
    server.modes[path], server.drops_left[path] = "drop", 2
    downloads = tmp_path / "downloads"
    assert cli("fetch", "hvc_release", "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    final = downloads / "hvc_release" / "releases_models.zip"
    assert final.read_bytes() == body and not final.with_name(final.name + ".part").exists()
    digest = hashlib.sha256(body).hexdigest()
    assert final.with_name(final.name + ".sha256").read_text().split()[0] == digest
    ranges = [requested for _, requested in server.requests]
    assert ranges[0] is None and ranges[1] == f"bytes={len(body) // 2}-" and len(ranges) == 3
    # A later run verifies the file against its recorded hash instead of downloading it again.
    assert cli("fetch", "hvc_release", "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    assert len(server.requests) == 3


def fetch_through_dropping_server(server, tmp_path: Path) -> tuple[Path, bytes, str]:
    """crw's checkpoint from a server that drops every transfer half-way: the fetch gives up
    (exit 2). Returns the downloads folder, the file's content and its URL path on the server."""
    body = b"x" * 10_000
    serve(server, "crw", {"pretrained.pth": body})
    path = urlsplit(load_registry("datasets")["crw"]["files"][0]["url"]).path
    server.modes[path], server.drops_left[path] = "drop", 100
    downloads = tmp_path / "downloads"
    assert cli("fetch", "crw", "--dest", downloads, "--mirror", server.mirror, *FAST) == 2
    return downloads, body, path


def test_download_gives_up_after_bounded_retries_and_keeps_the_part(tmp_path, server, capsys):
    downloads, body, path = fetch_through_dropping_server(server, tmp_path)
    assert "failed after 4 attempts" in capsys.readouterr().err and len(server.requests) == 4
    assert not (downloads / "crw" / "pretrained.pth").exists()
    server.drops_left[path] = 0  # the next run resumes from the kept part
    assert cli("fetch", "crw", "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    assert (downloads / "crw" / "pretrained.pth").read_bytes() == body
    assert server.requests[-1][1] is not None


def test_corrupted_archive_refused_and_nothing_extracted(tmp_path, server, registry, capsys):
    body = davis_zip({"2017/val.txt": ["bmx"]}, {"bmx": [1]}, 1)
    registry({"davis17": {"files": [{"name": "DAVIS-2017-trainval-480p.zip", "type": "archive",
                                     "url": load_registry("datasets")["davis17"]["files"][0]["url"],
                                     "sha256": hashlib.sha256(body).hexdigest()}]}})
    serve(server, "davis17", {"DAVIS-2017-trainval-480p.zip": body})
    server.modes[next(iter(server.routes))] = "corrupt"
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    assert cli("fetch", "davis17", "--dest", downloads, "--mirror", server.mirror, *FAST) == 2
    assert "refused" in capsys.readouterr().err
    assert not any((downloads / "davis17").iterdir())
    # The same corrupted bytes placed by hand are refused by extract before anything is written.
    corrupted = bytearray(body)
    corrupted[len(body) // 2] ^= 0xFF
    (downloads / "davis17" / "DAVIS-2017-trainval-480p.zip").write_bytes(bytes(corrupted))
    assert cli("extract", "davis17", "--downloads", downloads, "--dest", data) == 2
    assert "does not match" in capsys.readouterr().err
    assert not data.exists() or not any(data.iterdir())


@pytest.mark.parametrize(
    ("archive_name", "build"),
    [
        ("MSRA10K_Imgs_GT.zip", lambda: zip_bytes({"MSRA10K_Imgs_GT/Imgs/1.jpg": b"a", "../escaped.txt": b"x"})),
        ("MSRA10K_Imgs_GT.zip", lambda: zip_bytes({"MSRA10K_Imgs_GT/Imgs/1.jpg": b"a", "/tmp/vcorr-escaped.txt": b"x"})),
        ("VOCtrainval_11-May-2012.tar", lambda: tar_bytes({"VOCdevkit/a.jpg": b"a", "VOCdevkit/../../escaped.txt": b"x"})),
        ("VOCtrainval_11-May-2012.tar", lambda: tar_bytes({"VOCdevkit/a.jpg": b"a"}, links={"VOCdevkit/link": "/etc/passwd"})),
    ],
)
def test_escaping_archive_refused_before_writing(tmp_path, archive_name, build, capsys):
    dataset_id = "msra10k" if archive_name.endswith(".zip") else "voc"
    downloads, data = tmp_path / "work" / "downloads", tmp_path / "work" / "data"
    (downloads / dataset_id).mkdir(parents=True)
    (downloads / dataset_id / archive_name).write_bytes(build())
    assert cli("extract", dataset_id, "--downloads", downloads, "--dest", data) == 2
    assert "refused" in capsys.readouterr().err
    assert not list(data.iterdir()) and not list(tmp_path.rglob("escaped.txt"))
    assert not Path("/tmp/vcorr-escaped.txt").exists()


def test_partially_extracted_folder_is_redone(tmp_path, server, registry):
    registry({"coco": {"index": {"train": {"expect": {"frames": 1}}}}})
    serve(server, "coco", {"train2017.zip": zip_bytes({"train2017/1.jpg": jpeg_bytes()})})
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    assert cli("fetch", "coco", "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    # What a killed run leaves: the destination without its completion marker, and a staging folder.
    (data / "coco" / "train2017").mkdir(parents=True)
    (data / "coco" / "train2017" / "half-written.jpg").write_bytes(b"\xff\xd8")
    (data / ".coco.abc123.tmp" / "train2017").mkdir(parents=True)
    assert cli("extract", "coco", "--downloads", downloads, "--dest", data) == 0
    assert sorted(path.name for path in (data / "coco" / "train2017").iterdir()) == ["1.jpg"]
    assert (data / "coco" / MARKER).is_file() and sorted(path.name for path in data.iterdir()) == ["coco"]
    # A complete folder (marker matching the archive) is trusted and left alone.
    (data / "coco" / "kept").write_text("")
    assert cli("extract", "coco", "--downloads", downloads, "--dest", data) == 0
    assert (data / "coco" / "kept").exists()
    assert cli("index", "coco", "--data", data, "--out", tmp_path / "coco.csv") == 0


# ---------------------------------------------------------------- manual-only sets


def test_manual_set_says_where_and_is_accepted_once_placed(tmp_path, registry, capsys):
    registry({"vip": {"index": {"val": {"expect": {"sequences": 1, "frames": 2}}}}})
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    assert cli("fetch", "vip", "--dest", downloads) == 2
    error = capsys.readouterr().err
    assert "onedrive.live.com" in error and f"put VIP_Fine.zip in {downloads / 'vip'}/" in error
    assert cli("extract", "vip", "--downloads", downloads, "--dest", data) == 2
    (downloads / "vip").mkdir(parents=True)
    (downloads / "vip" / "VIP_Fine.zip").write_bytes(zip_bytes({
        "VIP_Fine/lists/val_videos.txt": b"videos7\n",
        "VIP_Fine/Images/videos7/000000000001.jpg": jpeg_bytes(),
        "VIP_Fine/Images/videos7/000000000026.jpg": jpeg_bytes(),
        "VIP_Fine/Annotations/Category_ids/videos7/000000000001.png": label_bytes([3]),
        "VIP_Fine/Annotations/Category_ids/videos7/000000000026.png": label_bytes([3]),
    }))
    assert cli("fetch", "vip", "--dest", downloads) == 0
    assert (downloads / "vip" / "VIP_Fine.zip.sha256").is_file()
    assert cli("extract", "vip", "--downloads", downloads, "--dest", data) == 0
    assert cli("index", "vip", "--data", data, "--out", tmp_path / "vip.csv") == 0
    table = read_index(tmp_path / "vip.csv")
    assert table.frame.tolist() == ["000000000001", "000000000026"] and table.annotation.str.endswith(".png").all()


def test_manual_weights_placed_by_hand(tmp_path, capsys):
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    assert cli("fetch", "stt_r18_s4", "--dest", downloads) == 2
    assert f"put stt_r18_s4.pth in {downloads / 'stt_r18_s4'}/" in capsys.readouterr().err
    (downloads / "stt_r18_s4").mkdir(parents=True)
    (downloads / "stt_r18_s4" / "stt_r18_s4.pth").write_bytes(b"checkpoint")
    assert cli("fetch", "stt_r18_s4", "--dest", downloads) == 0
    assert cli("extract", "stt_r18_s4", "--downloads", downloads, "--dest", data) == 0
    assert (data / "stt_r18_s4" / "stt_r18_s4.pth").read_bytes() == b"checkpoint"
    # A placed file that later changes no longer matches its recorded hash.
    (downloads / "stt_r18_s4" / "stt_r18_s4.pth").write_bytes(b"tampered")
    assert cli("fetch", "stt_r18_s4", "--dest", downloads) == 2
    assert "does not match the hash recorded" in capsys.readouterr().err


def test_ytvos_placed_by_hand_objects_over_first_appearances(tmp_path, registry):
    registry({"ytvos18": {"index": {"valid": {"expect": {"sequences": 2, "frames": 5, "objects": 3}}}}})
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    meta = b'{"videos": {"0a49f5265b": {"objects": {}}, "0062f687f1": {"objects": {}}}}'
    entries = {"valid/meta.json": meta}
    for vid, frames in {"0062f687f1": (0, 5, 10), "0a49f5265b": (0, 5)}.items():
        for number in frames:
            entries[f"valid/JPEGImages/{vid}/{number:05d}.jpg"] = jpeg_bytes()
    entries["valid/Annotations/0062f687f1/00000.png"] = label_bytes([1])
    entries["valid/Annotations/0062f687f1/00005.png"] = label_bytes([1, 2])  # object 2 appears here
    entries["valid/Annotations/0a49f5265b/00000.png"] = label_bytes([1])
    (downloads / "ytvos18").mkdir(parents=True)
    (downloads / "ytvos18" / "valid.zip").write_bytes(zip_bytes(entries))
    assert cli("fetch", "ytvos18", "--dest", downloads) == 0
    assert cli("extract", "ytvos18", "--downloads", downloads, "--dest", data) == 0
    assert cli("index", "ytvos18", "--data", data, "--out", tmp_path / "y.csv") == 0
    table = read_index(tmp_path / "y.csv")
    assert table.sequence.tolist() == ["0062f687f1"] * 3 + ["0a49f5265b"] * 2
    assert table.objects.tolist() == [2, 2, 2, 1, 1]
    assert table.image[0] == str(data / "ytvos18" / "valid" / "JPEGImages" / "0062f687f1" / "00000.jpg")


def test_imagenet_class_archives_unpacked(tmp_path, registry):
    registry({"imagenet": {"index": {"train": {"expect": {"sequences": 2, "frames": 3}}}}})
    downloads, data = tmp_path / "downloads", tmp_path / "data"
    inner = {
        "n01440764.tar": tar_bytes({"n01440764_10026.JPEG": jpeg_bytes(), "n01440764_10027.JPEG": jpeg_bytes()}),
        "n01443537.tar": tar_bytes({"n01443537_10007.JPEG": jpeg_bytes()}),
    }
    (downloads / "imagenet").mkdir(parents=True)
    (downloads / "imagenet" / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(inner))
    assert cli("fetch", "imagenet", "--dest", downloads) == 0
    assert cli("extract", "imagenet", "--downloads", downloads, "--dest", data) == 0
    assert cli("index", "imagenet", "--data", data, "--out", tmp_path / "i.csv") == 0
    table = read_index(tmp_path / "i.csv")
    assert table.sequence.tolist() == ["n01440764", "n01440764", "n01443537"]
    assert table.image[2] == str(data / "imagenet" / "train" / "n01443537" / "n01443537_10007.JPEG")
    assert sorted(path.name for path in (data / "imagenet").iterdir()) == [MARKER, "train"]


def test_a_publishers_sha256_prefix_is_checked(tmp_path, server, registry, capsys):
    # torchvision's and mmcv's released file names end in the first 8 hex digits of the sha256.
    body = b"torchvision's resnet18"
    digest = hashlib.sha256(body).hexdigest()
    name = "resnet18-f37072fd.pth"
    url = load_registry("datasets")["torchvision_r18"]["files"][0]["url"]
    serve(server, "torchvision_r18", {name: body})
    downloads = tmp_path / "downloads"
    registry({"torchvision_r18": {"files": [{"name": name, "url": url, "type": "file", "sha256_prefix": digest[:8]}]}})
    assert cli("fetch", "torchvision_r18", "--dest", downloads, "--mirror", server.mirror, *FAST) == 0
    assert (downloads / "torchvision_r18" / name).read_bytes() == body
    # Another file under that name: refused by the download and, placed by hand, by the next fetch.
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    registry({"torchvision_r18": {"files": [{"name": name, "url": url, "type": "file", "sha256_prefix": wrong}]}})
    assert cli("fetch", "torchvision_r18", "--dest", downloads, "--mirror", server.mirror, *FAST) == 2
    assert f"does not match the registry's sha256 prefix (config/datasets.yaml) {wrong}" in capsys.readouterr().err
    (downloads / "torchvision_r18" / name).unlink()
    assert cli("fetch", "torchvision_r18", "--dest", tmp_path / "fresh", "--mirror", server.mirror, *FAST) == 2
    assert f"expected the registry's sha256 prefix {wrong}" in capsys.readouterr().err
    assert not (tmp_path / "fresh" / "torchvision_r18" / name).exists()
