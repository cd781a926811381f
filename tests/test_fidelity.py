"""Margins of a propagation run (vcorr.propagation.margins) and the classification of differing
places by them (vcorr.propagation.fidelity), on small hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcorr.propagation import propagate
from vcorr.propagation.fidelity import Tolerance, classify_ids, classify_joints, perturbation_bounds
from vcorr.propagation.margins import ChainSelection, MarginRecorder

PROTOCOLS = [
    ("crw", dict(cxt_size=2, radius=3, topk=4, temp=0.1)),
    ("stt", dict(precede=2, topk=4, temp=0.07, nrange=4)),
]


@pytest.mark.parametrize("protocol, params", PROTOCOLS)
def test_recording_margins_changes_no_output_and_ranks_past_the_cut(protocol, params):
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 16, 6, 8, generator=generator)
    label0 = np.zeros((24, 32), np.uint8)
    label0[4:14, 6:20], label0[12:22, 16:30] = 1, 2
    plain = propagate(feats, label0, protocol, **params)
    recorder = MarginRecorder()
    recorded = propagate(feats, label0, protocol, observer=recorder, **params)
    assert torch.equal(plain.soft, recorded.soft) and torch.equal(plain.ids, recorded.ids)
    assert len(recorder.soft) == 4 and sorted(recorder.selections) == [1, 2, 3]
    k = params["topk"]
    for t, (chain,) in recorder.selections.items():
        assert chain.ranked_similarity.shape[1] > k
        # the ranked list starts with the selection, then what the cut left out, in order
        torch.testing.assert_close(chain.ranked_similarity[:, :k], chain.similarity.sort(1, descending=True).values)
        assert bool((chain.ranked_similarity[:, k] <= chain.similarity.min(1).values).all())
        assert bool((chain.frames < t).all()) and bool((chain.frames >= 0).all())
        torch.testing.assert_close(chain.weights.sum(1), torch.ones(48))


def _chain(frames, positions, similarity, ranked, ranked_frames, ranked_positions, temp=0.1) -> ChainSelection:
    similarity = torch.tensor(similarity)
    return ChainSelection(
        frames=torch.tensor(frames, dtype=torch.int32), positions=torch.tensor(positions, dtype=torch.int32),
        weights=torch.softmax(similarity / temp, 1), similarity=similarity,
        ranked_similarity=torch.tensor(ranked), ranked_frames=torch.tensor(ranked_frames, dtype=torch.int32),
        ranked_positions=torch.tensor(ranked_positions, dtype=torch.int32),
    )


def test_a_near_tie_at_the_cut_bounds_this_frame_and_is_carried_along_the_selections():
    """A 1 x 2 grid, k = 1. Frame 1: query 0 selected key (0, 0) at 0.9, key (0, 1) comes 1e-7
    below (a near-tie) with other labels; query 1's runner-up is far. Frame 2: query 0 reads
    frame 1's query 0 with weight 1."""
    recorder = MarginRecorder()
    recorder.protocol, recorder.out_size = "crw", (1, 2)
    labels = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # [M=2, 1, 2]: position 0 is label 0
    recorder.soft = [labels, labels, labels]
    recorder.selections[1] = [_chain([[0], [0]], [[0], [1]], [[0.9], [0.8]],
                                     [[0.9, 0.9 - 1e-7], [0.8, 0.1]], [[0, 0], [0, 0]], [[0, 1], [1, 0]])]
    recorder.selections[2] = [_chain([[1], [1]], [[0], [1]], [[0.9], [0.8]],
                                     [[0.9, 0.1], [0.8, 0.1]], [[1, 1], [1, 1]], [[0, 1], [1, 0]])]
    bounds = perturbation_bounds(recorder, affinity=1e-6)
    assert bounds.this_frame[1].flatten().tolist() == [1.0, 0.0]  # weight 1 x label difference 1
    assert bounds.carried[2].flatten().tolist() == [1.0, 0.0] and bounds.this_frame[2].flatten().tolist() == [0.0, 0.0]
    assert perturbation_bounds(recorder, affinity=1e-8).carried[2].flatten().tolist() == [0.0, 0.0]


def _frame0_recorder(soft: torch.Tensor) -> MarginRecorder:
    recorder = MarginRecorder()
    recorder.protocol, recorder.out_size, recorder.soft = "crw", tuple(soft.shape[-2:]), [soft]
    return recorder


def test_ids_differ_by_a_label_near_tie_or_by_a_real_deviation():
    soft = torch.zeros(3, 4, 5)
    soft[0] = 1.0
    soft[1, 1, 1], soft[0, 1, 1] = 0.5, 0.5 - 1e-6  # channel 1 wins by rounding
    soft[2, 2, 3], soft[0, 2, 3] = 0.9, 0.1  # channel 2 wins clearly
    recorder = _frame0_recorder(soft)
    ours = soft.argmax(0).numpy().astype(np.uint8)
    bounds = perturbation_bounds(recorder, Tolerance().affinity)
    other = ours.copy()
    other[1, 1] = 0  # a single differing pixel, at the near-tie
    comparison = classify_ids(recorder, 0, ours, other, bounds, Tolerance())
    assert comparison.where == {"label_near_tie": [(1, 1)]} and comparison.counts["equal"] == 19
    other[2, 3] = 0
    other[0, 0] = 1  # channel 1 has labels here but far below channel 0
    comparison = classify_ids(recorder, 0, ours, other, bounds, Tolerance())
    assert comparison.where["real_deviation"] == [(0, 0), (2, 3)] and comparison.differing == 3
    other[0, 0] = 7  # an id vcorr has no channel for
    assert classify_ids(recorder, 0, ours, other, bounds, Tolerance()).counts["real_deviation"] == 2
    assert classify_ids(recorder, 0, ours, other, bounds, Tolerance(label=0.5)).where["label_near_tie"] == [(1, 1), (2, 3)]


def test_joints_differ_within_a_top5_near_tie_box_or_not_at_all():
    maps = torch.zeros(2, 20, 20)
    maps[0, 10, 10], maps[0, 10, 11], maps[0, 11, 10], maps[0, 9, 10] = 1.0, 0.8, 0.8, 0.8
    maps[0, 10, 9] = maps[0, 10, 17] = 0.5  # 5th and 6th tie: (9, 10) or (17, 10) (x, y)
    maps[1, 5, 5], maps[1, 5, 6], maps[1, 6, 5], maps[1, 4, 5], maps[1, 5, 4] = 1.0, 0.5, 0.5, 0.5, 0.5
    from vcorr.metrics.pck import heatmaps_to_coords

    ours = heatmaps_to_coords(maps.numpy()[None])[..., 0]
    other = ours.copy()
    other[0, 0] += 8 * 0.5 / 3.9  # the 6th pixel taken instead of the 5th
    assert classify_joints(maps, ours, other, {}, Tolerance()).where == {"heatmap_near_tie": [0]}
    other[0, 0] = 18.0  # outside every possible top-5
    other[0, 1] = ours[0, 1] + 1e-4  # joint 1: equal within the coordinate rounding
    assert classify_joints(maps, ours, other, {}, Tolerance()).where == {"real_deviation": [0]}
    other[0, 1] = ours[0, 1] + 0.2  # joint 1's top-5 is clear: no tie explains 0.2 px
    assert classify_joints(maps, ours, other, {}, Tolerance()).where["real_deviation"] == [0, 1]


def test_a_coordinate_rounded_just_outside_the_near_tie_box_is_inside_it():
    # One row of candidates (x 5..10, y 10), the 5th and 6th tied: the other's top-5 is anywhere
    # on the row, and its float32 weighted mean may round to y = 10 - 2e-4.
    maps = torch.zeros(1, 20, 20)
    maps[0, 10, 5:11] = torch.tensor([0.5, 0.5, 0.6, 0.7, 0.8, 1.0])
    from vcorr.metrics.pck import heatmaps_to_coords

    ours = heatmaps_to_coords(maps.numpy()[None])[..., 0]
    other = ours.copy()
    other[:, 0] += (-0.1, -2e-4)
    assert classify_joints(maps, ours, other, {}, Tolerance()).where == {"heatmap_near_tie": [0]}
    other[1, 0] -= 0.01  # off the row by more than the coordinate rounding
    assert classify_joints(maps, ours, other, {}, Tolerance()).where == {"real_deviation": [0]}
