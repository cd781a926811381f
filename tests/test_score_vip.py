"""VIP mIoU: the confusion matrix and IoU by hand, nearest resizing, the CLI and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vcorr.cli import main
from vcorr.io import write_index_png
from vcorr.metrics.vip import class_iou, confusion_matrix, miou, resize_nearest


def test_confusion_matrix_and_iou_by_hand():
    gt = np.array([[0, 1], [1, 255]], np.uint8)
    pred = np.array([[0, 1], [0, 1]], np.uint8)
    hist = confusion_matrix(gt, pred)
    assert hist.shape == (20, 20)
    assert hist[0, 0] == 1 and hist[1, 1] == 1 and hist[1, 0] == 1 and hist.sum() == 3  # 255 ignored
    iou = class_iou(hist)
    assert iou[0] == pytest.approx(1 / (1 + 2 - 1))
    assert iou[1] == pytest.approx(1 / (2 + 1 - 1))
    assert np.isnan(iou[2:]).all()  # classes never seen do not count in the mean
    assert miou([("f", gt, pred)])["mIoU"] == pytest.approx(50.0)


def test_one_matrix_over_all_frames_not_a_mean_of_frames():
    frame_a = (np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))  # class 0 perfect, 4 px
    frame_b = (np.array([[1, 1], [1, 1]], np.uint8), np.array([[1, 0], [0, 0]], np.uint8))
    scores = miou([("a", *frame_a), ("b", *frame_b)])
    # Pooled: hist[0,0] = 4, hist[1,0] = 3, hist[1,1] = 1. IoU0 = 4/7, IoU1 = 1/4.
    assert scores["per_class_IoU"][0] == pytest.approx(100 * 4 / 7)
    assert scores["per_class_IoU"][1] == pytest.approx(100 * 1 / 4)
    assert scores["mIoU"] == pytest.approx(100 * (4 / 7 + 1 / 4) / 2)
    assert scores["frames"] == 2


def test_predictions_are_resized_nearest_to_the_annotation():
    small = np.array([[1, 2], [3, 4]], np.uint8)
    np.testing.assert_array_equal(
        resize_nearest(small, (4, 4)),
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]],
    )
    gt = np.kron(small, np.ones((2, 2), np.uint8))
    assert miou([("f", gt, small)])["mIoU"] == pytest.approx(100.0)


def _make_vip(root, results):
    rng = np.random.default_rng(3)
    frames = {}
    for video in ("v1", "v2"):
        for frame in ("000000000001", "000000000002"):
            gt = rng.integers(0, 4, size=(12, 16), dtype=np.uint8)
            gt[0, :3] = 255
            pred = gt.copy()
            pred[gt == 255] = 1  # ignored pixels: any prediction there does not count
            pred[5:, :] = 0
            write_index_png(root / "Annotations" / "Category_ids" / video / f"{frame}.png", gt)
            write_index_png(results / video / f"{frame}.png", pred)
            frames[video, frame] = (gt, pred)
    (root / "lists").mkdir()
    (root / "lists" / "val_videos.txt").write_text("v1\nv2\n")
    return frames


def test_cli_scores_a_results_folder(tmp_path):
    root, results, out = tmp_path / "vip", tmp_path / "results", tmp_path / "vip.json"
    frames = _make_vip(root, results)
    assert main(["score", "vip", "--vip-root", str(root), "--results", str(results), "--out", str(out)]) == 0
    scores = json.loads(out.read_text())
    hist = sum(confusion_matrix(gt, pred) for gt, pred in frames.values())
    with np.errstate(invalid="ignore"):  # classes absent everywhere: 0 / 0
        expected = 100 * np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    assert scores["global"]["mIoU"] == pytest.approx(np.nanmean(expected))
    for index in range(4):
        assert scores["per_class_IoU"][str(index)] == pytest.approx(expected[index])
    assert scores["per_class_IoU"]["7"] is None
    assert scores["frames"] == 4

    # --list restricts the videos.
    (tmp_path / "only_v2.txt").write_text("v2\n")
    assert main(["score", "vip", "--vip-root", str(root), "--results", str(results), "--out", str(out),
                 "--list", str(tmp_path / "only_v2.txt")]) == 0
    assert json.loads(out.read_text())["frames"] == 2


@pytest.mark.parametrize("damage", ["missing_frame", "class_id_too_high", "missing_video"])
def test_cli_refusals_write_nothing(tmp_path, capsys, damage):
    root, results, out = tmp_path / "vip", tmp_path / "results", tmp_path / "vip.json"
    _make_vip(root, results)
    frame = results / "v2" / "000000000002.png"
    if damage == "missing_frame":
        frame.unlink()
    elif damage == "class_id_too_high":
        write_index_png(frame, np.full((12, 16), 20, np.uint8))
    else:
        for path in (results / "v2").iterdir():
            path.unlink()
        (results / "v2").rmdir()
    code = main(["score", "vip", "--vip-root", str(root), "--results", str(results), "--out", str(out)])
    assert code == 2
    assert ("v2" if damage == "missing_video" else "000000000002.png") in capsys.readouterr().err
    assert not out.exists()
