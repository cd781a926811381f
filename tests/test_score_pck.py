"""JHMDB PCK: equal to the Spa-then-Temp/VFS evaluation, the definitions by hand, the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.io

from vcorr.cli import main
from vcorr.metrics.pck import heatmaps_to_coords, pck


def _fixture_clips(shared_testdata):
    folder = shared_testdata / "pck" / "pck-a"
    clips = []
    for index in range(3):
        gt = scipy.io.loadmat(folder / f"vid{index}.mat")["pos_img"] - 1
        heatmaps = np.load(folder / f"vid{index}_pred.npy")
        clips.append((gt, heatmaps))
    return folder, clips


def test_pck_a_equals_the_official_evaluation(shared_testdata):
    folder, clips = _fixture_clips(shared_testdata)
    official = json.loads((folder / "official.json").read_text())
    predictions = [heatmaps_to_coords(heatmaps[: gt.shape[2]]) for gt, heatmaps in clips]
    scores = pck(predictions, [gt for gt, _ in clips])
    assert list(scores) == ["PCK@0.1", "PCK@0.2", "PCK@0.3", "PCK@0.4", "PCK@0.5"]
    for key, value in official.items():
        assert scores[key] == pytest.approx(value, abs=1e-9), key


def test_cli_scores_the_fixture_from_coordinate_files(shared_testdata, tmp_path, capsys):
    folder, clips = _fixture_clips(shared_testdata)
    official = json.loads((folder / "official.json").read_text())
    split_lines = []
    for index, (gt, heatmaps) in enumerate(clips):
        action, clip = "wave", f"clip_{index}"
        mat_dir = tmp_path / "jhmdb" / "joint_positions" / action / clip
        mat_dir.mkdir(parents=True)
        shutil.copy(folder / f"vid{index}.mat", mat_dir / "joint_positions.mat")
        (tmp_path / "pred" / action).mkdir(parents=True, exist_ok=True)
        # More predicted frames than annotated: the scorer truncates to the annotation length.
        np.save(tmp_path / "pred" / action / f"{clip}.npy", heatmaps_to_coords(heatmaps))
        split_lines.append(f"JHMDB/joint_positions/{action}/{clip}/joint_positions.mat JHMDB/Rename_Images/{action}/{clip}")
    assert clips[0][1].shape[0] >= clips[0][0].shape[2]
    (tmp_path / "val.txt").write_text("\n".join(split_lines) + "\n")
    out = tmp_path / "pck.json"
    args = ["score", "jhmdb", "--jhmdb-root", str(tmp_path / "jhmdb"), "--split", str(tmp_path / "val.txt"),
            "--predictions", str(tmp_path / "pred"), "--out", str(out)]
    assert main(args) == 0
    scores = json.loads(out.read_text())["global"]
    for key, value in official.items():
        assert scores[key] == pytest.approx(value, abs=1e-9), key

    out.unlink()
    (tmp_path / "pred" / "wave" / "clip_1.npy").unlink()
    assert main(args) == 2
    assert "clip_1.npy" in capsys.readouterr().err
    assert not out.exists()


def test_heatmaps_to_coords_top5_weighted_mean_by_hand():
    maps = np.zeros((1, 15, 4, 5), dtype=np.float32)
    # Joint 0: six values; the smallest (0.5 at y=3, x=4) is not among the top 5.
    for (y, x), value in {(0, 0): 4, (0, 1): 3, (1, 0): 1, (2, 2): 1, (3, 0): 1, (3, 4): 0.5}.items():
        maps[0, 0, y, x] = value
    maps[0, 2, 3, 1] = 7.0  # a single peak: exactly its position
    # Joint 1 stays all zero: (-1, -1).
    coords = heatmaps_to_coords(maps)
    assert coords.shape == (2, 15, 1)
    # Weights 4, 3, 1, 1, 1 over 10: x = (0*4 + 1*3 + 0 + 2 + 0) / 10, y = (0 + 0 + 1 + 2 + 3) / 10.
    assert coords[0, 0, 0] == pytest.approx(0.5)
    assert coords[1, 0, 0] == pytest.approx(0.6)
    assert tuple(coords[:, 1, 0]) == (-1.0, -1.0)
    assert tuple(coords[:, 2, 0]) == pytest.approx((1.0, 3.0))


def test_pck_by_hand():
    # One frame; ground truth spans 30 x 40 px, so the normaliser is 0.6 * 50 = 30 px.
    gt = np.zeros((2, 15, 1))
    gt[0, :, 0] = np.linspace(0, 30, 15)
    gt[1, :, 0] = np.linspace(0, 40, 15)
    gt += 10  # keep every predicted x > 0
    pred = gt.copy()
    pred[0, 0, 0] += 6  # d = 0.2
    pred[1, 1, 0] += 12  # d = 0.4
    scores = pck([pred], [gt], alphas=(0.1, 0.3, 0.5))
    assert scores["PCK@0.1"] == pytest.approx(100 * 13 / 15)
    assert scores["PCK@0.3"] == pytest.approx(100 * 14 / 15)
    assert scores["PCK@0.5"] == pytest.approx(100.0)


def test_invisible_joints_are_left_out_of_the_box_and_the_counts():
    gt = np.zeros((2, 15, 2))
    gt[0] = np.linspace(5, 35, 15)[:, None]
    gt[1] = np.linspace(5, 45, 15)[:, None]
    pred = gt.copy()
    pred[0, 3, 1] = -1  # invisible in frame 1 (predicted x <= 0)
    pred[1, 3, 1] = -1
    pred[0, 14, 0] += 100  # far off in frame 0
    scores = pck([pred], [gt], alphas=(0.5,))
    # Joint 14 has 1 of 2 frames within reach, joint 3 only its visible frame (a hit): 14.5 / 15.
    assert scores["PCK@0.5"] == pytest.approx(100 * (13 + 0.5 + 1) / 15)
