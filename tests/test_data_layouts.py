"""benchmark_frames on tiny copies of each benchmark's official layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcorr.data.layouts import benchmark_frames, missing_sequences
from vcorr.data.benchmarks import benchmark
from vcorr.data.readers import jhmdb_split_clips
from vcorr.errors import VcorrError


def write_image(path: Path, height: int = 6, width: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)


def write_label(path: Path, height: int = 6, width: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width), np.uint8), mode="L").save(path)


def make_davis(root: Path, sets: dict[str, list[str]], frames: int = 3, labelled_frames: int | None = None) -> None:
    for image_set, names in sets.items():
        (root / "ImageSets" / image_set).parent.mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / image_set).write_text("\n".join(names) + "\n")
    for names in sets.values():
        for index, name in enumerate(names):
            for number in range(frames):
                write_image(root / "JPEGImages/480p" / name / f"{number:05d}.jpg", 6 + index, 8)
                if labelled_frames is None or number < labelled_frames:
                    write_label(root / "Annotations/480p" / name / f"{number:05d}.png", 6 + index, 8)


def test_davis17_rows_in_list_and_temporal_order(tmp_path):
    make_davis(tmp_path, {"2017/val.txt": ["bmx", "ant"], "2016/val.txt": ["bmx"]}, frames=12)
    table = benchmark_frames("davis17", tmp_path)
    assert list(table.columns) == ["sequence", "frame", "image", "annotation", "height", "width"]
    assert list(table.sequence.unique()) == ["bmx", "ant"]
    assert list(table[table.sequence == "bmx"].frame) == [f"{n:05d}" for n in range(12)]
    assert table.iloc[0].image == str(tmp_path / "JPEGImages/480p/bmx/00000.jpg")
    assert table.iloc[0].annotation == str(tmp_path / "Annotations/480p/bmx/00000.png")
    assert (table[table.sequence == "ant"].height == 7).all() and (table.width == 8).all()
    assert list(benchmark_frames("davis16", tmp_path).sequence.unique()) == ["bmx"]
    unsized = benchmark_frames("davis17", tmp_path, with_sizes=False)
    assert (unsized.height == 0).all() and unsized.image.tolist() == table.image.tolist()


def test_davis17dev_first_frame_annotations_only(tmp_path):
    make_davis(tmp_path, {"2017/test-dev.txt": ["aerobatics"]}, frames=3, labelled_frames=1)
    table = benchmark_frames("davis17dev", tmp_path)
    assert table.annotation.tolist()[1:] == ["", ""] and table.annotation[0].endswith("00000.png")


def test_ytvos_frames_present_and_first_appearance_labels(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"videos": {"b2": {"objects": {}}, "a1": {"objects": {}}}}))
    for vid in ("a1", "b2"):
        for number in (0, 5, 10):
            write_image(tmp_path / "JPEGImages" / vid / f"{number:05d}.jpg")
    write_label(tmp_path / "Annotations/a1/00000.png")
    write_label(tmp_path / "Annotations/b2/00005.png")
    table = benchmark_frames("ytvos19", tmp_path)
    assert table.sequence.tolist() == ["a1"] * 3 + ["b2"] * 3
    assert table.frame.tolist() == ["00000", "00005", "00010"] * 2
    assert [bool(a) for a in table.annotation] == [True, False, False, False, True, False]


def test_jhmdb_val_split_from_project_list(tmp_path):
    clips = jhmdb_split_clips(benchmark("jhmdb").split_list_path())
    assert len(clips) == 268 and len({clip.split("/")[0] for clip in clips}) == 21
    for clip in clips[:2]:
        for number in range(1, 4):
            write_image(tmp_path / "Rename_Images" / clip / f"{number:05d}.png")
        (tmp_path / "joint_positions" / clip).mkdir(parents=True)
        (tmp_path / "joint_positions" / clip / "joint_positions.mat").write_bytes(b"mat")
    write_image(tmp_path / "Rename_Images" / clips[2] / "00001.png")
    with pytest.raises(VcorrError, match=f"joint_positions/{clips[2]}/joint_positions.mat: missing"):
        benchmark_frames("jhmdb", tmp_path)
    table = benchmark_frames("jhmdb", tmp_path, skip_missing=True)
    assert table.sequence.unique().tolist() == clips[:2]
    assert table.frame.tolist() == ["00001", "00002", "00003"] * 2
    assert table.annotation.tolist() == [str(tmp_path / "joint_positions" / clips[0] / "joint_positions.mat")] * 3 + [
        str(tmp_path / "joint_positions" / clips[1] / "joint_positions.mat")
    ] * 3
    missing = missing_sequences("jhmdb", tmp_path)
    assert len(missing) == 266 and missing[clips[2]] == [tmp_path / "joint_positions" / clips[2] / "joint_positions.mat"]


def test_vip_official_list_and_sparse_labels(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/val_videos.txt").write_text("videos7\n")
    for number in (1, 26):
        write_image(tmp_path / "Images/videos7" / f"{number:012d}.jpg")
    write_label(tmp_path / "Annotations/Category_ids/videos7/000000000001.png")
    table = benchmark_frames("vip", tmp_path)
    assert table.frame.tolist() == ["000000000001", "000000000026"]
    assert table.annotation[0].endswith("Category_ids/videos7/000000000001.png") and table.annotation[1] == ""


def test_vip_project_list_has_fifty_videos():
    assert len(benchmark("vip").split_list_path().read_text().split()) == 50


def test_wrong_layout_names_the_missing_path(tmp_path):
    with pytest.raises(VcorrError, match="ImageSets/2017/val.txt"):
        benchmark_frames("davis17", tmp_path)
    make_davis(tmp_path, {"2017/val.txt": ["bmx"]}, frames=1)
    (tmp_path / "ImageSets/2017/val.txt").write_text("bmx\ngone\n")
    with pytest.raises(VcorrError, match="480p/gone: missing"):
        benchmark_frames("davis17", tmp_path)
    with pytest.raises(VcorrError, match="meta.json"):
        benchmark_frames("ytvos18", tmp_path)
    with pytest.raises(VcorrError, match="unknown benchmark"):
        benchmark_frames("kitti", tmp_path)
    with pytest.raises(VcorrError, match="missing"):
        benchmark_frames("vip", tmp_path / "nowhere")
