"""Task adapters: late objects, VIP labels, JHMDB heat maps and read-out, writers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vcorr.errors import VcorrError
from vcorr.io import DAVIS_PALETTE, read_index_png
from vcorr.propagation import propagate
from vcorr.propagation.fidelity import Tolerance, classify_joints, joint_maps, perturbation_bounds
from vcorr.propagation.margins import MarginRecorder
from vcorr.propagation.adapters import (
    IndexPngWriter,
    KeypointWriter,
    jhmdb_first_heatmaps,
    joint_heatmaps,
    keypoint_coords,
    late_objects,
    upsample_soft,
    vip_labels,
)


def test_late_objects_keep_only_first_appearances():
    label0 = np.zeros((4, 5), np.uint8)
    label0[0, 0] = 1
    frame2 = np.array(label0)
    frame2[1, 1] = 3  # new
    frame2[2, 2] = 1  # known
    frame5 = np.array(frame2)
    frame5[3, 3] = 2  # new; 3 is known by now
    late = late_objects(label0, [(2, frame2), (5, frame5)])
    assert sorted(late) == [2, 5]
    assert late[2].tolist() == np.where(frame2 == 3, 3, 0).tolist()
    assert late[5].tolist() == np.where(frame5 == 2, 2, 0).tolist()
    assert late_objects(label0, [(1, label0)]) == {}
    with pytest.raises(VcorrError, match="differs"):
        late_objects(label0, [(1, np.zeros((3, 3), np.uint8))])


def test_vip_labels_map_void_to_background():
    ids = np.array([[0, 5, 19], [20, 255, 7]], np.uint8)
    assert vip_labels(ids).tolist() == [[0, 5, 19], [0, 0, 7]]


def test_joint_heatmaps_follow_the_reference_drawing():
    size = (40, 50)
    joints = np.array([[20.7, 3.5, -30.0, 49.2], [15.2, 2.9, 10.0, 39.9]])  # x row, y row
    maps = joint_heatmaps(joints, size, sigma=4)
    assert maps.shape == (4, 40, 50) and maps.dtype == np.float32
    for joint in range(3):
        x, y = joints[:, joint]
        left, top = int(x - 12), int(y - 12)  # truncation toward zero
        right, bottom = int(x + 13), int(y + 13)
        cx, cy = left + 12, top + 12
        for py in range(size[0]):
            for px in range(size[1]):
                inside = max(0, left) <= px < min(right, size[1]) and max(0, top) <= py < min(bottom, size[0])
                expected = math.exp(-((px - cx) ** 2 + (py - cy) ** 2) / 32) if inside else 0.0
                assert maps[joint, py, px] == pytest.approx(expected, abs=1e-7)
    assert maps[0].max() == 1.0 and maps[0, 15, 20] == 1.0
    assert maps[2].max() == 0.0  # off the image
    assert maps[3, 39, 49] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "protocol, params",
    [
        ("crw", dict(cxt_size=2, radius=4, topk=5, temp=0.01, num_channels=15)),
        ("stt", dict(precede=2, topk=5, temp=0.01, nrange=8)),
    ],
)
def test_keypoints_through_still_frames_stay_put(protocol, params):
    """JHMDB adapter end to end: heat maps at the joints, a still clip, coordinates read back. They
    stay put on every CPU as `vcorr.propagation.fidelity` defines it: equal, or where the heat
    map's top-5 holds a near-tie within rounding (Spa-then-Temp's maps hold exact ties at the cut
    here, so one CPU's rounding moved joint 7 by 0.195 px), within those tied pixels' box."""
    generator = torch.Generator().manual_seed(0)
    h, w, stride = 10, 12, 4
    feats = torch.randn(1, 64, h, w, generator=generator).expand(3, -1, -1, -1).clone()
    joints = np.stack([np.linspace(8, 38, 15), np.linspace(6, 32, 15)])
    size = (h * stride, w * stride)
    heat = joint_heatmaps(joints, size)
    recorder = MarginRecorder()
    result = propagate(feats, heat, protocol, observer=recorder, **params)
    assert result.soft.shape == (3, 15, h, w)
    writer = KeypointWriter()
    for soft in result.soft:
        writer.add(keypoint_coords(soft, protocol, size))
    coords = np.stack(writer.frames, axis=-1)
    assert coords.shape == (2, 15, 3)
    centres = np.stack([np.trunc(joints[0] - 12) + 12, np.trunc(joints[1] - 12) + 12])
    assert np.abs(coords - centres[..., None]).max() < 2.0  # a stride-4 grid's worth of blur
    tolerance = Tolerance()
    bounds = perturbation_bounds(recorder, tolerance.affinity)
    assert max(float(bound.max()) for bound in bounds.carried) < 1e-6  # the still clip selects itself
    for t in (1, 2):
        assert np.array_equal(joint_maps(recorder, t).numpy(), upsample_soft(result.soft[t], protocol, size).numpy())
        comparison = classify_joints(joint_maps(recorder, t), coords[..., t], coords[..., 0], {}, tolerance)
        assert set(comparison.counts) <= {"equal", "heatmap_near_tie"}, comparison.where
    moved = np.array(coords[..., 0])
    moved[0, 7] += 0.195
    near_tie = classify_joints(joint_maps(recorder, 1), coords[..., 1], moved, {}, tolerance).where
    assert near_tie == ({"heatmap_near_tie": [7]} if protocol == "stt" else {"real_deviation": [7]})


def test_upsample_soft_uses_the_protocols_alignment():
    soft = torch.arange(4.0).view(1, 2, 2)
    assert upsample_soft(soft, "crw", (4, 4))[0, 0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert upsample_soft(soft, "stt", (4, 4))[0, 0].tolist() == pytest.approx([0, 0.25, 0.75, 1])


def test_writers_write_palette_pngs_and_coordinate_arrays(tmp_path):
    ids = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    path = IndexPngWriter(tmp_path / "seq").write("00005", torch.from_numpy(ids))
    assert path == tmp_path / "seq" / "00005.png"
    assert read_index_png(path).tolist() == ids.tolist()
    with Image.open(path) as image:
        assert image.mode == "P" and image.getpalette()[:12] == DAVIS_PALETTE[:12]
    writer = KeypointWriter()
    with pytest.raises(VcorrError, match="no frames"):
        writer.save(tmp_path / "empty.npy")
    for t in range(4):
        writer.add(np.full((2, 15), t, np.float32))
    saved = np.load(writer.save(tmp_path / "action" / "clip.npy"))
    assert saved.shape == (2, 15, 4) and saved[0, 3, 2] == 2
    assert sorted(p.name for p in (tmp_path / "action").iterdir()) == ["clip.npy"]


def test_jhmdb_first_heatmaps_read_the_1_based_mat(tmp_path):
    import scipy.io

    positions = np.zeros((2, 15, 3))
    positions[0], positions[1] = np.linspace(10, 40, 15)[:, None], 20.0  # x, y (1-based)
    scipy.io.savemat(tmp_path / "joint_positions.mat", {"pos_img": positions})
    maps = jhmdb_first_heatmaps(tmp_path / "joint_positions.mat", (30, 50))
    np.testing.assert_array_equal(maps, joint_heatmaps(positions[..., 0] - 1, (30, 50)))
    assert maps[0, 19, 9] == 1.0  # 1-based (10, 20) -> pixel x 9, y 19
    scipy.io.savemat(tmp_path / "bad.mat", {"pos_img": np.zeros((2, 14, 3))})
    with pytest.raises(VcorrError, match="bad.mat"):
        jhmdb_first_heatmaps(tmp_path / "bad.mat", (30, 50))
    with pytest.raises(VcorrError, match="missing"):
        jhmdb_first_heatmaps(tmp_path / "none.mat", (30, 50))
