"""Label propagation: the originals' answers, a dense reference written from the definitions,
window borders, tie rules (more in test_propagation_ties.py), and behaviour on sequences whose
answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vcorr.errors import VcorrError
from vcorr.propagation import make_propagator, propagate, propagate_stream
from vcorr.propagation.affinity import ordered_topk
from vcorr.propagation.protocols import read_out
from vcorr.propagation.window import Window, make_tiles

# ---------------------------------------------------------------- the originals' answers


def _fixture_cases(shared_testdata):
    return sorted((shared_testdata / "propagation").glob("*.npz"))


def test_fixtures_reproduce_the_original_code(shared_testdata):
    cases = _fixture_cases(shared_testdata)
    assert len(cases) >= 4
    for path in cases:
        data = np.load(path)
        protocol = {"hvc": "crw", "stt": "stt"}[str(data["protocol"])]
        late = {int(data["late_t"]): data["late_label"]} if "late_t" in data.files else None
        result = propagate(
            torch.from_numpy(data["feats"]), data["label0"], protocol, late=late,
            **json.loads(str(data["params"])),
        )
        assert result.soft.shape == data["soft"].shape, path.name
        np.testing.assert_allclose(result.soft.numpy(), data["soft"], rtol=0, atol=1e-5, err_msg=path.name)
        assert result.ids.dtype == torch.uint8
        assert (result.ids.numpy() == data["ids"]).mean() >= 0.999, path.name


# ---------------------------------------------------------------- dense reference


def _circle_allowed(h, w, radius):
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    distance = ((y[:, None] - y[None]) ** 2 + (x[:, None] - x[None]) ** 2).float() ** 0.5
    return distance < radius  # [key, query]


def _square_allowed(h, w, nrange):
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    half = nrange // 2
    return ((y[:, None] - y[None]).abs() <= half) & ((x[:, None] - x[None]).abs() <= half)


def _attend(query, keys, labels, allowed, k, temp):
    """query [K, hw]; keys list of [K, hw]; labels list of [M, hw]; allowed list of [hw, hw] bool
    ([key, query]) or None (unrestricted). The original's concatenated context list, densely;
    top-k as the originals take it (random inputs have no ties)."""
    scores = torch.cat(
        [
            (query.t() @ key).masked_fill(~mask.t(), float("-inf")) if mask is not None else query.t() @ key
            for key, mask in zip(keys, allowed)
        ],
        dim=1,
    )  # [query, context list]
    values, index = torch.topk(scores, k, dim=1)
    weights = torch.softmax(values / temp, dim=1)  # [hw, k]
    table = torch.cat(labels, 1)  # [M, L]
    return (table[:, index] * weights[None]).sum(2)  # [M, hw]


def reference_crw(feats, label0, cxt_size, radius, topk, temp, late=None, channels=20):
    T, K, h, w = feats.shape
    H, W = label0.shape
    feats = F.normalize(feats, dim=1).flatten(2)
    down = lambda x: F.interpolate(x[None], (h, w), mode="bilinear", align_corners=True)[0]
    up = lambda x: F.interpolate(x[None], (H, W), mode="bilinear", align_corners=True)[0]
    onehot = lambda ids: F.one_hot(torch.as_tensor(ids).long(), channels).permute(2, 0, 1).float()
    allowed = _circle_allowed(h, w, radius)
    labels = {0: down(onehot(label0)).flatten(1)}
    chains = [(0, (labels[0].sum(1) > 0).float()[:, None])]
    ids = [up(labels[0].view(-1, h, w)).argmax(0)]
    for t in range(1, T):
        merged = 0
        for t0, valid in chains:
            context = [t0] + [max(s, t0) for s in range(t - cxt_size, t)]
            pred = _attend(
                feats[t], [feats[j] for j in context], [labels[j] for j in context],
                [None] + [allowed] * cxt_size, topk, temp,
            )
            merged = merged + valid * pred
        if late and t in late:
            init = onehot(late[t])
            init[0] = 0
            new = down(init).flatten(1)
            weight = new.sum(0, keepdim=True)
            merged = (1 - weight) * merged + weight * new
            chains.append((t, (init.flatten(1).sum(1) > 0).float()[:, None]))
        labels[t] = merged
        ids.append(up(merged.view(-1, h, w)).argmax(0))
    return torch.stack([labels[t].view(-1, h, w) for t in range(T)]), torch.stack(ids).byte()


def reference_stt(feats, label0, precede, topk, temp, nrange, with_first_neighbor=True):
    T, K, h, w = feats.shape
    H, W = label0.shape
    feats = F.normalize(feats, dim=1).flatten(2)
    small = np.asarray(Image.fromarray(np.asarray(label0, np.uint8)).resize((w, h), Image.NEAREST))
    small = torch.from_numpy(small.astype(np.int64))
    labels = {0: F.one_hot(small, int(small.max()) + 1).permute(2, 0, 1).float().flatten(1)}
    allowed = _square_allowed(h, w, nrange)
    ids = [torch.as_tensor(np.asarray(label0))]
    for t in range(1, T):
        context = [0] + list(range(max(0, t - precede), t))
        masks = [allowed] * len(context)
        if not with_first_neighbor:
            masks[0] = None
        pred = _attend(feats[t], [feats[j] for j in context], [labels[j] for j in context], masks, topk, temp)
        labels[t] = pred
        upsampled = F.interpolate(pred.view(1, -1, h, w), (H, W), mode="bilinear", align_corners=False)[0]
        low = upsampled.flatten(1).min(1).values[:, None, None]
        high = upsampled.flatten(1).max(1).values[:, None, None]
        upsampled = torch.where(high > 0, (upsampled - low) / (high - low + 1e-12), upsampled)
        ids.append(upsampled.argmax(0))
    return torch.stack([labels[t].view(-1, h, w) for t in range(T)]), torch.stack(ids).byte()


def _random_sequence(seed, T, K, h, w, stride, n_ids):
    generator = torch.Generator().manual_seed(seed)
    # smooth-ish features so that windows matter, plus noise so there are no exact ties
    base = torch.randn(T, K, h // 2 + 1, w // 2 + 1, generator=generator)
    feats = F.interpolate(base, (h, w), mode="bilinear", align_corners=False)
    feats = feats + 0.3 * torch.randn(T, K, h, w, generator=generator)
    label = torch.randint(0, n_ids, (h // 2 + 1, w // 2 + 1), generator=generator).float()
    label0 = F.interpolate(label[None, None], (h * stride, w * stride), mode="nearest")[0, 0]
    return feats, label0.to(torch.uint8).numpy()


@pytest.mark.parametrize(
    "seed, shape, params, tile",
    [
        (0, (9, 16, 10, 13, 4), dict(cxt_size=4, radius=3, topk=6, temp=0.1), (8, 8)),
        (1, (7, 8, 9, 11, 2), dict(cxt_size=8, radius=2.5, topk=4, temp=0.05), (3, 5)),  # t <= C throughout
        (2, (6, 8, 7, 12, 3), dict(cxt_size=2, radius=5, topk=20, temp=0.1), (4, 16)),  # k > circle
        (3, (5, 8, 6, 6, 2), dict(cxt_size=3, radius=1, topk=3, temp=0.1), (2, 2)),  # window = 1 cell
        (4, (7, 16, 14, 19, 4), dict(cxt_size=50, radius=12, topk=15, temp=0.1), None),  # HVC defaults
    ],
)
def test_crw_equals_dense_reference(seed, shape, params, tile):
    T, K, h, w, stride = shape
    feats, label0 = _random_sequence(seed, T, K, h, w, stride, n_ids=4)
    expected_soft, expected_ids = reference_crw(feats, label0, **params)
    result = propagate(feats, label0, "crw", tile_size=tile, **params)
    torch.testing.assert_close(result.soft, expected_soft, rtol=0, atol=1e-5)
    assert (result.ids == expected_ids).float().mean() >= 0.999


def test_crw_late_objects_equal_dense_reference():
    feats, label0 = _random_sequence(5, 10, 16, 9, 12, 4, n_ids=3)
    generator = torch.Generator().manual_seed(6)
    late = {}
    for t, new_id in ((2, 4), (6, 7)):  # one object while t <= C, one after
        patch = np.zeros_like(label0)
        y, x = (int(v) for v in torch.randint(0, 20, (2,), generator=generator))
        patch[y : y + 12, x : x + 16] = new_id
        late[t] = patch
    params = dict(cxt_size=3, radius=3, topk=5, temp=0.1)
    expected_soft, expected_ids = reference_crw(feats, label0, late=late, **params)
    result = propagate(feats, label0, "crw", late=late, tile_size=(4, 5), **params)
    torch.testing.assert_close(result.soft, expected_soft, rtol=0, atol=1e-5)
    assert (result.ids == expected_ids).float().mean() >= 0.999
    assert result.soft[6:, 7].amax() > 0.5  # the late object is tracked


@pytest.mark.parametrize(
    "seed, shape, params, tile",
    [
        (0, (9, 16, 10, 13, 4), dict(precede=3, topk=5, temp=0.07, nrange=6), (8, 8)),
        (1, (7, 8, 9, 11, 2), dict(precede=10, topk=7, temp=0.07, nrange=5), (3, 4)),  # frame 0 twice throughout
        (2, (8, 8, 8, 9, 3), dict(precede=2, topk=4, temp=0.1, nrange=24), (5, 5)),  # window > frame
        (3, (8, 16, 10, 13, 4), dict(precede=3, topk=6, temp=0.07, nrange=4, with_first_neighbor=False), (4, 8)),
        (4, (24, 16, 30, 34, 2), dict(precede=20, topk=10, temp=0.07, nrange=24), None),  # Spa-then-Temp DAVIS
    ],
)
def test_stt_equals_dense_reference(seed, shape, params, tile):
    T, K, h, w, stride = shape
    feats, label0 = _random_sequence(seed, T, K, h, w, stride, n_ids=5)
    expected_soft, expected_ids = reference_stt(feats, label0, **params)
    result = propagate(feats, label0, "stt", tile_size=tile, **params)
    torch.testing.assert_close(result.soft, expected_soft, rtol=0, atol=1e-5)
    assert (result.ids == expected_ids).float().mean() >= 0.999


# ---------------------------------------------------------------- windows and ties


def _window_keys(tiles, h, w):
    """{query position: set of allowed key positions} read back from the tiles' masks."""
    allowed = {}
    for tile in tiles:
        ok = tile.mask == 0  # [R, Q, Cn]
        for q, query in enumerate(tile.query_index.tolist()):
            allowed[query] = set(tile.key_index[ok[:, q, :]].tolist())
    return allowed


@pytest.mark.parametrize("radius", [1, 2.5, 3, 5])
def test_circle_window_is_strict_and_clipped(radius):
    h, w = 9, 11
    allowed = _window_keys(make_tiles(h, w, Window.circle(radius), (4, 3)), h, w)
    assert sorted(allowed) == list(range(h * w))
    for query in range(h * w):
        qy, qx = divmod(query, w)
        expected = {
            ky * w + kx for ky in range(h) for kx in range(w)
            if ((ky - qy) ** 2 + (kx - qx) ** 2) ** 0.5 < radius
        }
        assert allowed[query] == expected
    if radius == 5:  # distance exactly 5 (3-4-5) is outside, 4 is inside
        assert 4 * w + 4 not in allowed[0] and 0 * w + 4 in allowed[0] and 3 * w + 3 in allowed[0]


@pytest.mark.parametrize("nrange", [1, 4, 5, 24])
def test_square_window_is_clipped_at_borders(nrange):
    h, w = 8, 10
    allowed = _window_keys(make_tiles(h, w, Window.square(nrange), (3, 4)), h, w)
    half = nrange // 2
    for query in range(h * w):
        qy, qx = divmod(query, w)
        expected = {
            ky * w + kx
            for ky in range(max(0, qy - half), min(h, qy + half + 1))
            for kx in range(max(0, qx - half), min(w, qx + half + 1))
        }
        assert allowed[query] == expected
    assert len(allowed[0]) == min(h, half + 1) * min(w, half + 1)  # corner: clipped square


def test_ordered_topk_breaks_ties_by_position():
    values = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    top_values, top_index, tied = ordered_topk(values, 2)
    assert top_index.tolist() == [[1, 2], [0, 1]]
    assert top_values.tolist() == [[3.0, 3.0], [5.0, 5.0]]
    assert tied.tolist() == [True, True]
    top_values, top_index, tied = ordered_topk(values, 4)
    assert top_index.tolist() == [[1, 2, 4, 3], [0, 1, 2, 3]]
    assert tied.tolist() == [False, True]


@pytest.mark.parametrize("protocol", ["crw", "stt"])
def test_constant_features_pick_the_earliest_candidates_under_the_cuda_rule(protocol):
    """All affinities tie: rule "cuda" keeps the earliest keys of the original's list (context
    entry, then raster position), identically for every tiling; rule "cpu" is checked against
    torch.topk in tests/test_propagation_ties.py, and is tiling independent too."""
    h, w, k = 6, 7, 4
    feats = torch.ones(3, 8, h, w)
    label0 = np.arange(h * w, dtype=np.uint8).reshape(h, w) % 10
    params = (
        dict(cxt_size=2, radius=3, topk=k, temp=0.1, num_channels=10)
        if protocol == "crw" else dict(precede=2, topk=k, temp=0.07, nrange=4)
    )
    for ties in ("cpu", "cuda"):
        first = propagate(feats, label0, protocol, ties=ties, **params)
        again = propagate(feats, label0, protocol, tile_size=(2, 3), ties=ties, **params)
        assert torch.equal(first.soft, again.soft)
    soft0 = first.soft[0].flatten(1)
    if protocol == "crw":
        # the unrestricted reference frame comes first: its raster positions 0..k-1 for everyone
        expected = soft0[:, :k].mean(1)
        torch.testing.assert_close(first.soft[1], expected[:, None, None].expand(-1, h, w))
    else:
        # at t = 1 the list holds frame 0 twice: the first copy's first k window positions
        allowed = _square_allowed(h, w, 4)
        for query in (0, 17, h * w - 1):
            keys = allowed[:, query].nonzero().squeeze(1)[:k]
            torch.testing.assert_close(first.soft[1].flatten(1)[:, query], soft0[:, keys].mean(1))
    with pytest.raises(VcorrError, match="ties must be one of"):
        propagate(feats, label0, protocol, ties="gpu", **params)


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize("protocol", ["crw", "stt"])
def test_identical_frames_keep_their_labels(protocol):
    generator = torch.Generator().manual_seed(0)
    frame = torch.randn(64, 9, 11, generator=generator)
    feats = frame.expand(6, -1, -1, -1).clone()
    label0 = torch.randint(0, 4, (9, 11), generator=generator).numpy().astype(np.uint8)
    params = (
        dict(cxt_size=3, radius=4, topk=5, temp=0.01)
        if protocol == "crw" else dict(precede=3, topk=5, temp=0.01, nrange=6)
    )
    result = propagate(feats, label0, protocol, **params)
    for t in range(1, 6):
        torch.testing.assert_close(result.soft[t], result.soft[0], rtol=0, atol=1e-6)
        assert torch.equal(result.ids[t], torch.from_numpy(label0))


@pytest.mark.parametrize("protocol", ["crw", "stt"])
def test_global_shift_moves_the_labels(protocol):
    """Frames are crops of one random feature field moving by (1, -2) per frame: the labels
    follow the content (checked away from the borders where new content enters)."""
    generator = torch.Generator().manual_seed(1)
    field = torch.randn(64, 30, 40, generator=generator)
    h, w, T, step = 14, 18, 4, (1, -2)
    origin = (8, 12)
    feats = torch.stack(
        [
            field[:, origin[0] + t * step[0] : origin[0] + t * step[0] + h,
                  origin[1] + t * step[1] : origin[1] + t * step[1] + w]
            for t in range(T)
        ]
    )
    label0 = np.zeros((h, w), np.uint8)
    label0[4:9, 5:12] = 1
    label0[9:12, 3:7] = 2
    params = (
        dict(cxt_size=2, radius=4, topk=3, temp=0.01)
        if protocol == "crw" else dict(precede=2, topk=3, temp=0.01, nrange=8)
    )
    result = propagate(feats, label0, protocol, **params)
    for t in range(1, T):
        # content at field (Y, X) is at frame-t position (Y - origin - t*step)
        expected = np.roll(label0, (-t * step[0], -t * step[1]), axis=(0, 1))
        inner = (slice(T, h - T), slice(2 * T, w - 2 * T))
        assert np.array_equal(result.ids[t].numpy()[inner], expected[inner])


# ---------------------------------------------------------------- interface


@pytest.mark.parametrize(
    "protocol, params, kept",
    [
        ("crw", dict(cxt_size=3, radius=3, topk=4, temp=0.1), 3),
        ("stt", dict(precede=3, topk=4, temp=0.07, nrange=6), 4),  # frame 0 + the last 3
    ],
)
def test_streaming_keeps_only_the_context(protocol, params, kept):
    feats, label0 = _random_sequence(9, 12, 8, 6, 7, 2, n_ids=3)
    propagator = make_propagator(protocol, label0, **params)
    for t, frame in enumerate(feats):
        propagator.push(frame)
        assert len(propagator.memory.slot_of) == min(t + 1, kept)
    assert max(propagator.memory.slot_of) == 11 and len(propagator.memory.dense_keys) <= 1


def test_stream_equals_whole_sequence_and_soft_initial_labels():
    feats, label0 = _random_sequence(7, 6, 8, 8, 9, 2, n_ids=3)
    heat = F.one_hot(torch.from_numpy(label0).long(), 3).permute(2, 0, 1).float() * 2.5
    params = dict(precede=2, topk=4, temp=0.07, nrange=6)
    whole = propagate(feats, heat, "stt", **params)
    streamed = list(propagate_stream((f for f in feats), heat, "stt", **params))
    assert torch.equal(whole.soft, torch.stack([f.soft for f in streamed]))
    assert whole.soft.shape == (6, 3, 8, 9)
    # soft inputs are resized bilinearly (align_corners=False), not re-one-hot
    expected0 = F.interpolate(heat[None], (8, 9), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(whole.soft[0], expected0)


def test_bad_inputs_raise_clear_errors():
    feats, label0 = _random_sequence(0, 3, 8, 6, 6, 2, n_ids=3)
    with pytest.raises(VcorrError, match="unknown propagation protocol"):
        propagate(feats, label0, "nope", topk=3)
    with pytest.raises(VcorrError, match="bad parameters"):
        propagate(feats, label0, "crw", cxt_size=2, radius=3, topk=3)
    with pytest.raises(VcorrError, match="crw only"):
        propagate(feats, label0, "stt", late={1: label0}, precede=2, topk=3, temp=0.1, nrange=4)
    with pytest.raises(VcorrError, match="beyond"):
        propagate(feats, label0, "crw", late={5: label0}, cxt_size=2, radius=3, topk=3, temp=0.1)
    with pytest.raises(VcorrError, match="does not fit"):
        propagate(feats, label0 + 30, "crw", cxt_size=2, radius=3, topk=3, temp=0.1)
    with pytest.raises(VcorrError, match="differ"):
        propagate([feats[0], feats[1, :, :5]], label0, "crw", cxt_size=2, radius=3, topk=3, temp=0.1)


@pytest.mark.parametrize("align_corners, min_max", [(True, False), (False, True), (False, False)])
def test_read_out_equals_argmax_over_all_channels(align_corners, min_max):
    """Only non-empty channels are upsampled; the answer must equal the plain definition,
    including pixels where every channel is 0 and ties."""
    generator = torch.Generator().manual_seed(3)
    soft = torch.rand(8, 6, 7, generator=generator)
    soft[[1, 4, 7]] = 0  # empty channels, one below the others
    soft[:, :2, :3] = 0  # all channels 0 here
    soft[5, 3:, 4:] = soft[3, 3:, 4:]  # exact ties
    size = (18, 21)
    up = F.interpolate(soft[None], size, mode="bilinear", align_corners=align_corners)[0]
    if min_max:
        low = up.flatten(1).min(1).values[:, None, None]
        high = up.flatten(1).max(1).values[:, None, None]
        up = torch.where(high > 0, (up - low) / (high - low + 1e-12), up)
    expected = up.argmax(0).to(torch.uint8)
    assert torch.equal(read_out(soft, size, align_corners, min_max), expected)
    soft[0] = 0
    soft[2, 0, 0] = -1.0  # negative labels: every channel is compared
    up = F.interpolate(soft[None], size, mode="bilinear", align_corners=align_corners)[0]
    assert torch.equal(read_out(soft, size, align_corners, False), up.argmax(0).to(torch.uint8))


def test_tiling_does_not_change_results_and_low_precision_is_opt_in():
    feats, label0 = _random_sequence(11, 6, 16, 13, 17, 2, n_ids=3)
    params = dict(precede=3, topk=5, temp=0.07, nrange=8)
    default = propagate(feats, label0, "stt", **params)
    for tile in [(1, 1), (5, 3), (13, 17), (40, 40)]:
        torch.testing.assert_close(propagate(feats, label0, "stt", tile_size=tile, **params).soft, default.soft)
    low = propagate(feats, label0, "stt", affinity_dtype="bfloat16", **params)
    assert low.soft.dtype == torch.float32
    assert (low.ids == default.ids).float().mean() > 0.9  # close, not exact
    with pytest.raises(VcorrError, match="affinity_dtype"):
        propagate(feats, label0, "stt", affinity_dtype="float64", **params)


def test_parameters_are_checked_by_name_and_real_type_errors_are_not_hidden(monkeypatch):
    from vcorr.propagation import protocols

    feats, label0 = _random_sequence(0, 3, 8, 6, 6, 2, n_ids=3)
    with pytest.raises(VcorrError, match="bad parameters: unknown with_first"):
        propagate(feats, label0, "stt", precede=2, topk=3, temp=0.1, nrange=4, with_first=True)
    with pytest.raises(VcorrError, match="bad parameters: missing temp"):
        propagate(feats, label0, "crw", cxt_size=2, radius=3, topk=3)

    def broken_step(self, features, new_objects):
        raise TypeError("a bug inside the protocol")

    monkeypatch.setattr(protocols.CRWPropagator, "_step", broken_step)
    with pytest.raises(TypeError, match="a bug inside the protocol"):
        propagate(feats, label0, "crw", cxt_size=2, radius=3, topk=3, temp=0.1)


def test_flat_indexing_refuses_a_layout_it_does_not_expect():
    from vcorr.propagation.affinity import _require_layout

    _require_layout(torch.zeros(2, 3, 4), (2, 3, 4), "scores")
    with pytest.raises(RuntimeError, match="contiguous"):
        _require_layout(torch.zeros(4, 3, 2).permute(2, 1, 0), (2, 3, 4), "scores")
    with pytest.raises(RuntimeError, match=r"shape \(2, 3, 4\)"):
        _require_layout(torch.zeros(2, 12), (2, 3, 4), "scores")
