"""Spa-then-Temp's first-frame label path (vcorr.propagation.stt_labels) on JHMDB- and VIP-shaped
inputs, against references written from the definitions its code relies on:

- mmcv `imresize(..., 'nearest', backend='pillow')` = PIL NEAREST: destination pixel i reads
  source floor((i + 0.5) * in / out);
- mmcv `imresize(..., 'bilinear', backend='cv2')` and torch bilinear with align_corners=False:
  source coordinate (i + 0.5) * in / out - 0.5, clamped at 0, linear weights, last index clamped;
- torch `nearest` (frame 0's output): source floor(i * in / out) (float32 scale).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcorr.propagation import make_propagator
from vcorr.propagation.stt_labels import first_frame_output, labels_at_input_size, stt_first_frame
from vcorr.propagation.adapters import joint_heatmaps


def _pil_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(int), n_in - 1)


def _torch_nearest_index(n_in: int, n_out: int) -> np.ndarray:
    scale = np.float32(n_in / n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(int), n_in - 1)


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] half-pixel linear interpolation weights."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        low = min(int(np.floor(x)), n_in - 1)
        high = min(low + 1, n_in - 1)
        frac = x - low
        matrix[i, low] += 1 - frac
        matrix[i, high] += frac
    return matrix


def _bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = _linear_matrix(maps.shape[-2], size[0])
    cols = _linear_matrix(maps.shape[-1], size[1])
    return rows @ maps @ cols.T


def _vip_ids(rng) -> np.ndarray:
    ids = np.zeros((300, 400), np.uint8)  # VIP frames are resized to 560x560
    for value in range(1, 20):
        y, x = rng.integers(0, 280), rng.integers(0, 380)
        ids[y : y + rng.integers(3, 40), x : x + rng.integers(3, 40)] = value
    ids[5:9, 5:9] = 255  # void is propagated as a label of its own, as Spa-then-Temp reads it
    return ids


def _jhmdb_maps(rng) -> np.ndarray:
    joints = np.stack([rng.uniform(-5, 325, 15), rng.uniform(-5, 245, 15)])
    return joint_heatmaps(joints, (240, 320), dtype=np.float64)  # as jhmdb_dataset_rgb draws them


def test_vip_shaped_ids_through_the_label_path():
    ids = _vip_ids(np.random.default_rng(0))
    first = stt_first_frame(ids, (560, 560), (300, 400))

    expected_input = ids[np.ix_(_pil_nearest_index(300, 560), _pil_nearest_index(400, 560))]
    assert first.labels.dtype == np.uint8
    np.testing.assert_array_equal(first.labels, expected_input)
    expected_first = expected_input[np.ix_(_torch_nearest_index(560, 300), _torch_nearest_index(560, 400))]
    np.testing.assert_array_equal(first.output.numpy(), expected_first)
    assert (first.output.numpy() != ids).any()  # the round trip is not the annotation

    # The feature grid (70x70 at stride 8): PIL nearest again, one-hot over max + 1 ids; frame 0's
    # output is the round trip at the frame size.
    features = torch.randn(8, 70, 70)
    propagator = make_propagator("stt", first.labels, precede=2, topk=3, temp=0.07, nrange=4,
                                 output_size=first.output_size)
    frame0 = propagator.push(features)
    grid = expected_input[np.ix_(_pil_nearest_index(560, 70), _pil_nearest_index(560, 70))]
    assert frame0.soft.shape == (256, 70, 70)
    np.testing.assert_array_equal(frame0.soft.argmax(0).numpy(), grid)
    np.testing.assert_array_equal(frame0.soft.sum(0).numpy(), np.ones((70, 70)))
    np.testing.assert_array_equal(frame0.ids.numpy(), expected_first)
    assert propagator.push(features).ids.shape == (300, 400)


def test_jhmdb_shaped_heatmaps_through_the_label_path():
    maps = _jhmdb_maps(np.random.default_rng(1))
    first = stt_first_frame(maps, (320, 320), (240, 320))

    expected_input = _bilinear(maps, (320, 320))
    assert first.labels.dtype == np.float64 and first.labels.shape == (15, 320, 320)
    np.testing.assert_allclose(first.labels, expected_input, rtol=0, atol=1e-6)
    expected_first = _bilinear(expected_input, (240, 320))
    np.testing.assert_allclose(first.output.numpy(), expected_first, rtol=0, atol=1e-6)
    assert np.abs(first.output.numpy() - maps).max() > 1e-2  # the round trip is not the drawn maps

    features = torch.randn(8, 40, 40)
    propagator = make_propagator("stt", first.labels, precede=2, topk=3, temp=0.07, nrange=4,
                                 output_size=first.output_size)
    frame0 = propagator.push(features)
    np.testing.assert_allclose(frame0.soft.numpy(), _bilinear(expected_input, (40, 40)), rtol=0, atol=1e-6)


def test_identity_when_input_size_is_the_frame_size():
    ids = _vip_ids(np.random.default_rng(2))
    first = stt_first_frame(ids, (300, 400), (300, 400))
    np.testing.assert_array_equal(first.labels, ids)
    np.testing.assert_array_equal(first.output.numpy(), ids)
    maps = _jhmdb_maps(np.random.default_rng(3))
    np.testing.assert_allclose(labels_at_input_size(maps, (240, 320)), maps, atol=1e-12)
    np.testing.assert_allclose(first_frame_output(maps, (240, 320)).numpy(), maps, atol=1e-12)


def test_rejects_other_shapes():
    from vcorr.errors import VcorrError

    with pytest.raises(VcorrError, match="expected"):
        labels_at_input_size(np.zeros((2, 3, 4, 5)), (4, 4))
