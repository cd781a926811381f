"""DAVIS J&F: equal to davis2017-evaluation on real masks, the definitions by hand, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vcorr.cli import main
from vcorr.io import read_index_png, write_index_png
from vcorr.metrics import davis, packed_masks
from vcorr.io_png import read_ids

# --- Against the official tool's answers ----------------------------------------------------------


def _linked_results(case_dir: Path, destination: Path) -> Path:
    """A results folder of links to the fixture's sequences: the scorer writes its CSVs here."""
    destination.mkdir()
    for sequence in case_dir.iterdir():
        (destination / sequence.name).symlink_to(sequence.resolve())
    return destination


@pytest.mark.parametrize("case", ["shift", "morph"])
def test_davis_osvos_equals_the_official_tool(shared_testdata, tmp_path, capsys, case):
    root = shared_testdata / "davis-osvos"
    official = json.loads((root / "official" / f"{case}.json").read_text())
    results = _linked_results(root / "results" / case, tmp_path / "results")
    out = tmp_path / "scores.json"

    assert main(["score", "davis", "--davis-root", str(root), "--results", str(results),
                 "--out", str(out), "--jobs", "2"]) == 0

    scores = json.loads(out.read_text())
    assert set(scores["global"]) == set(davis.GLOBAL_MEASURES)
    for key, value in official["global"].items():
        assert scores["global"][key] == pytest.approx(value, abs=1e-9), key
    assert list(scores["per_object"]) == list(official["per_object"])
    for name, measures in official["per_object"].items():
        for key, value in measures.items():
            assert scores["per_object"][name][key] == pytest.approx(value, abs=1e-9), (name, key)

    global_csv = (results / "global_results-val.csv").read_text().splitlines()
    assert global_csv[0] == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert global_csv[1] == ",".join(f"{official['global'][key]:.3f}" for key in davis.GLOBAL_MEASURES)
    per_object_csv = (results / "per-sequence_results-val.csv").read_text().splitlines()
    assert per_object_csv[0] == "Sequence,J-Mean,F-Mean"
    assert len(per_object_csv) == 1 + len(official["per_object"])
    assert "Global results for val" in capsys.readouterr().out


# --- Definitions ---------------------------------------------------------------------------------


def test_seg2bmap_by_hand():
    mask = np.array([[0, 0, 0, 0],
                     [0, 1, 1, 0],
                     [0, 1, 1, 0],
                     [0, 0, 0, 0]], dtype=bool)  # fmt: skip
    # A pixel differing from its right, bottom or bottom-right neighbour; offset towards the origin.
    expected = np.array([[1, 1, 1, 0],
                         [1, 0, 1, 0],
                         [1, 1, 1, 0],
                         [0, 0, 0, 0]], dtype=bool)  # fmt: skip
    np.testing.assert_array_equal(davis.seg2bmap(mask), expected)


def test_seg2bmap_last_row_and_column_rules():
    # Bottom-right pixel set: the last row compares only rightwards, the last column only downwards,
    # and the corner itself is never a boundary.
    corner = np.zeros((3, 3), dtype=bool)
    corner[2, 2] = True
    expected = np.zeros((3, 3), dtype=bool)
    expected[2, 1] = expected[1, 2] = expected[1, 1] = True
    np.testing.assert_array_equal(davis.seg2bmap(corner), expected)
    # A full mask has no boundary at all (the image border is not one).
    assert not davis.seg2bmap(np.ones((4, 5), dtype=bool)).any()


def test_boundary_tolerance_and_disk_match_the_official_choices():
    assert davis.boundary_tolerance(480, 854) == 8
    assert davis.boundary_tolerance(480, 1152) == 10  # ceil(9.984)
    from skimage.morphology import disk

    for radius in range(1, 14):
        np.testing.assert_array_equal(davis.disk_kernel(radius), disk(radius).astype(np.uint8))


def _official_style_f(pred: np.ndarray, gt: np.ndarray, radius: int) -> float:
    """The definition done the slow way: full-frame disk dilations of both boundary maps."""
    kernel = davis.disk_kernel(radius)
    pred_boundary, gt_boundary = davis.seg2bmap(pred), davis.seg2bmap(gt)
    pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
    return davis.f_from_boundary_counts(
        int(pred_boundary.sum()), int(gt_boundary.sum()),
        int((pred_boundary & gt_dilated).sum()), int((gt_boundary & pred_dilated).sum()),
    )  # fmt: skip


def _random_ids(rng, shape, n_objects, blobs=6):
    ids = np.zeros(shape, np.uint8)
    for _ in range(blobs):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        radius = rng.integers(2, max(3, min(shape) // 3))
        cv2.circle(ids, (int(x), int(y)), int(radius), int(rng.integers(1, n_objects + 1)), -1)
    noise = rng.random(shape) < 0.02
    ids[noise] = rng.integers(0, n_objects + 1, size=noise.sum())
    return ids


def test_fast_frame_scores_equal_full_frame_definitions():
    rng = np.random.default_rng(0)
    for trial in range(60):
        shape = (int(rng.integers(8, 70)), int(rng.integers(8, 90)))
        n_objects = int(rng.integers(1, 4))
        gt, result = _random_ids(rng, shape, n_objects), _random_ids(rng, shape, n_objects)
        if trial % 3 == 0:  # results close to the truth: the matched-by-inner-square path
            result = np.roll(gt, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
        radius = davis.boundary_tolerance(*shape)
        j_values, f_values = davis.score_frame(gt, result, n_objects)
        for index, object_id in enumerate(range(1, n_objects + 1)):
            pred_mask, gt_mask = result == object_id, gt == object_id
            union = (pred_mask | gt_mask).sum()
            expected_j = 1.0 if union == 0 else (pred_mask & gt_mask).sum() / union
            assert j_values[index] == expected_j
            assert f_values[index] == _official_style_f(pred_mask, gt_mask, radius)


def test_matched_boundary_pixels_at_the_disk_edge():
    # One pixel of `other`; boundary pixels at every offset: matched iff dx^2 + dy^2 <= r^2.
    radius = 5
    other = np.zeros((21, 21), dtype=bool)
    other[10, 10] = True
    for dy in range(-10, 11):
        for dx in range(-10, 11):
            boundary = np.zeros_like(other)
            boundary[10 + dy, 10 + dx] = True
            expected = int(dx * dx + dy * dy <= radius * radius)
            assert davis.matched_boundary_pixels(boundary, other, radius) == expected, (dy, dx)


def _seg2bmap_by_definition(mask):
    """The official _seg2bmap, unpacked: differs from the right, bottom or bottom-right pixel."""
    padded = np.pad(mask, ((0, 1), (0, 1)), mode="edge")  # edge pixels compare along the edge only
    return (mask != padded[:-1, 1:]) | (mask != padded[1:, :-1]) | (mask != padded[1:, 1:])


def test_packed_boundary_and_dilation_equal_the_unpacked_definitions():
    # Widths around the 64-pixel words, radii 1..20, sparse to dense masks.
    rng = np.random.default_rng(3)
    for radius in range(1, 21):
        for width in (1, 7, 63, 64, 65, 130):
            height = int(rng.integers(1, 40))
            mask = rng.random((height, width)) < rng.choice([0.01, 0.1, 0.5])
            boundary = rng.random((height, width)) < 0.3
            expected = cv2.dilate(mask.astype(np.uint8), davis.disk_kernel(radius)).astype(bool)
            layout = packed_masks.PackedLayout(width, radius)
            dilated = layout.unpack(packed_masks.dilate_disk(layout.pack(mask), layout), height)
            np.testing.assert_array_equal(dilated, expected, err_msg=f"radius {radius}, width {width}")
            assert davis.matched_boundary_pixels(boundary, mask, radius) == np.count_nonzero(boundary & expected)
            np.testing.assert_array_equal(davis.seg2bmap(mask), _seg2bmap_by_definition(mask))


def test_wide_frames_with_objects_at_the_edges_equal_full_frame_definitions():
    # Several 64-pixel words per row, objects touching every edge: the windows and edge copies.
    rng = np.random.default_rng(4)
    for trial in range(12):
        shape = (int(rng.integers(30, 90)), int(rng.integers(150, 400)))
        gt, result = _random_ids(rng, shape, 2, blobs=8), _random_ids(rng, shape, 2, blobs=8)
        gt[:, -3:], result[-2:, :] = 1, 2
        if trial % 2:
            result = np.roll(gt, (int(rng.integers(-9, 10)), int(rng.integers(-9, 10))), axis=(0, 1))
        radius = davis.boundary_tolerance(*shape)
        j_values, f_values = davis.score_frame(gt, result, 2)
        for index, object_id in enumerate((1, 2)):
            pred_mask, gt_mask = result == object_id, gt == object_id
            assert j_values[index] == (pred_mask & gt_mask).sum() / (pred_mask | gt_mask).sum()
            assert f_values[index] == _official_style_f(pred_mask, gt_mask, radius), (trial, object_id)


def test_empty_boundaries_precision_recall_cases():
    assert davis.f_from_boundary_counts(0, 7, 0, 0) == 0.0  # P = 1, R = 0
    assert davis.f_from_boundary_counts(7, 0, 0, 0) == 0.0  # P = 0, R = 1
    assert davis.f_from_boundary_counts(0, 0, 0, 0) == 1.0  # P = R = 1
    assert davis.f_from_boundary_counts(4, 4, 0, 0) == 0.0  # P + R = 0
    assert davis.f_from_boundary_counts(4, 2, 2, 2) == pytest.approx(2 * 0.5 * 1 / 1.5)
    empty, square = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    square[3:6, 3:6] = True
    assert davis.boundary_f(empty, square, 2) == 0.0
    assert davis.boundary_f(square, empty, 2) == 0.0
    assert davis.boundary_f(empty, empty, 2) == 1.0


def test_jaccard_of_empty_union_is_one():
    empty = np.zeros((4, 4), bool)
    assert davis.jaccard(empty, empty) == 1.0
    assert davis.score_frame(np.zeros((5, 5), np.uint8), np.zeros((5, 5), np.uint8), 2) == ([1.0, 1.0], [1.0, 1.0])


def test_decay_bins_by_hand_and_uint8_wrap():
    np.testing.assert_array_equal(davis.decay_bin_edges(10), [0, 2, 5, 7, 9])
    values = np.arange(10, dtype=float) / 10
    mean, recall, decay = davis.db_statistics(values)
    assert mean == pytest.approx(0.45)
    assert recall == pytest.approx(0.4)  # 0.6, 0.7, 0.8, 0.9
    assert decay == pytest.approx(np.mean(values[0:3]) - np.mean(values[7:10]))
    # 300 frames: the last edge 299 wraps to 43 (uint8), so the last bin x[224:44] is empty: NaN.
    np.testing.assert_array_equal(davis.decay_bin_edges(300), [0, 75, 150, 224, 43])
    assert np.isnan(davis.db_statistics(np.linspace(0, 1, 300))[2])
    # 257 frames: edges 0, 64, 128, 192, 256 -> 0; bin 3 is x[192:1], empty as well.
    np.testing.assert_array_equal(davis.decay_bin_edges(257), [0, 64, 128, 192, 0])


# --- Fast PNG reading ---------------------------------------------------------------------------


def test_fast_png_reader_equals_pillow_on_every_kind(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, size=(13, 17), dtype=np.uint8)
    write_index_png(tmp_path / "palette.png", ids)
    Image.fromarray(ids, mode="L").save(tmp_path / "grey.png")
    Image.fromarray(ids * 60, mode="L").save(tmp_path / "grey_filtered.png", optimize=True)
    image = Image.fromarray(ids, mode="P")
    image.save(tmp_path / "palette_4bit.png", bits=2)
    for name in ("palette.png", "grey.png", "grey_filtered.png", "palette_4bit.png"):
        np.testing.assert_array_equal(read_ids(tmp_path / name), read_index_png(tmp_path / name), err_msg=name)
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    for name in ("rgb.png", "broken.png", "missing.png"):
        with pytest.raises(davis.VcorrError, match=name):
            read_ids(tmp_path / name)


# --- Whole sequences and refusals through the CLI ----------------------------------------------


def _square_ids(shape, squares):
    ids = np.zeros(shape, np.uint8)
    for object_id, (top, left, size) in squares.items():
        ids[top : top + size, left : left + size] = object_id
    return ids


def _make_davis(root: Path, results: Path, year: int = 2017, sequences=("seq",), frames: int = 5):
    """Sequences (30x40) with objects 1 and 2; results identical to the annotations."""
    (root / "ImageSets" / str(year)).mkdir(parents=True)
    (root / "ImageSets" / str(year) / "val.txt").write_text("".join(f"{name}\n" for name in sequences))
    for name in sequences:
        for index in range(frames):
            ids = _square_ids((30, 40), {1: (2 + index, 3, 8), 2: (15, 20 + index, 9)})
            write_index_png(root / "Annotations" / "480p" / name / f"{index:05d}.png", ids)
            write_index_png(results / name / f"{index:05d}.png", ids)


def _score(root, results, tmp_path, *extra):
    out = tmp_path / "out.json"
    code = main(["score", "davis", "--davis-root", str(root), "--results", str(results), "--out", str(out),
                 "--jobs", "1", *extra])
    return code, out


def _no_outputs(results: Path, out: Path) -> bool:
    return not out.exists() and not list(results.glob("*.csv"))


def test_perfect_results_score_one_and_void_is_background(tmp_path):
    root, results = tmp_path / "davis", tmp_path / "results"
    _make_davis(root, results)
    annotation = root / "Annotations" / "480p" / "seq" / "00002.png"
    ids = read_index_png(annotation)
    ids[0:2, :] = 255  # void in the annotation is background: the results (0 there) stay perfect
    write_index_png(annotation, ids)
    code, out = _score(root, results, tmp_path)
    assert code == 0
    scores = json.loads(out.read_text())
    assert scores["global"]["J&F-Mean"] == 1.0
    assert list(scores["per_object"]) == ["seq_1", "seq_2"]
    assert scores["per_frame"]["seq"]["frames"] == ["00001", "00002", "00003"]  # first, last dropped


def test_missing_objects_are_empty_masks(tmp_path):
    root, results = tmp_path / "davis", tmp_path / "results"
    _make_davis(root, results)
    for path in (results / "seq").glob("*.png"):
        ids = read_index_png(path)
        ids[ids == 2] = 0
        write_index_png(path, ids)
    code, out = _score(root, results, tmp_path)
    assert code == 0
    scores = json.loads(out.read_text())["per_object"]
    assert scores["seq_1"] == {"J-Mean": 1.0, "F-Mean": 1.0}
    assert scores["seq_2"] == {"J-Mean": 0.0, "F-Mean": 0.0}


def test_object_count_comes_from_the_first_frame(tmp_path):
    root, results = tmp_path / "davis", tmp_path / "results"
    _make_davis(root, results)
    for name in ("00002.png", "00003.png"):  # a third object appears later in the annotations
        ids = read_index_png(root / "Annotations" / "480p" / "seq" / name)
        ids[25:29, 0:4] = 3
        write_index_png(root / "Annotations" / "480p" / "seq" / name, ids)
    code, out = _score(root, results, tmp_path)
    assert code == 0
    assert list(json.loads(out.read_text())["per_object"]) == ["seq_1", "seq_2"]


def test_year_2016_merges_objects(tmp_path):
    root, results = tmp_path / "davis", tmp_path / "results"
    _make_davis(root, results, year=2016)
    for path in (results / "seq").glob("*.png"):  # ids swapped: wrong per object, right merged
        ids = read_index_png(path)
        write_index_png(path, np.choose(ids, [0, 2, 1]).astype(np.uint8))
    code, out = _score(root, results, tmp_path, "--year", "2016")
    assert code == 0
    scores = json.loads(out.read_text())
    assert list(scores["per_object"]) == ["seq_1"]
    assert scores["global"]["J&F-Mean"] == 1.0
    # The same folder as DAVIS-2017 would read ImageSets/2017, which this root lacks.
    code, out = _score(root, results, tmp_path, "--year", "2017")
    assert code == 2


def _refusal_cases():
    def id_too_high(root, results):
        ids = read_index_png(results / "seq" / "00002.png")
        ids[0, 0] = 3
        write_index_png(results / "seq" / "00002.png", ids)
        return "00002.png"

    def missing_frame(root, results):
        (results / "seq" / "00003.png").unlink()
        return "00003.png"

    def other_size(root, results):
        write_index_png(results / "seq" / "00001.png", np.zeros((31, 40), np.uint8))
        return "00001.png"

    def rgb_png(root, results):
        Image.new("RGB", (40, 30)).save(results / "seq" / "00002.png")
        return "00002.png"

    def unreadable_png(root, results):
        (results / "seq" / "00001.png").write_bytes(b"garbage")
        return "00001.png"

    def missing_sequence(root, results):
        for path in (results / "seq").iterdir():
            path.unlink()
        (results / "seq").rmdir()
        return "seq"

    def unknown_subset(root, results):
        return "ImageSets/2017/test-dev.txt"

    return [id_too_high, missing_frame, other_size, rgb_png, unreadable_png, missing_sequence, unknown_subset]


@pytest.mark.parametrize("damage", _refusal_cases(), ids=lambda damage: damage.__name__)
def test_refusals_name_the_file_and_write_nothing(tmp_path, capsys, damage):
    root, results = tmp_path / "davis", tmp_path / "results"
    _make_davis(root, results)
    named = damage(root, results)
    extra = ["--subset", "test-dev"] if damage.__name__ == "unknown_subset" else []
    code, out = _score(root, results, tmp_path, *extra)
    assert code != 0
    assert named in capsys.readouterr().err
    assert _no_outputs(results, out)


def test_refusals_with_parallel_workers(tmp_path, capsys):
    root, results = tmp_path / "davis", tmp_path / "results"
    _make_davis(root, results, sequences=("seq", "seq2"))
    (results / "seq2" / "00003.png").unlink()
    code, out = _score(root, results, tmp_path, "--jobs", "2")
    assert code == 2 and "seq2/00003.png" in capsys.readouterr().err
    assert _no_outputs(results, out)
