"""Exact affinity ties: vcorr's windowed top-k against the originals' dense top-k, written as the
originals compute it (vcorr.propagation.affinity): one concatenated key list per query (context
entries in the original's order, each frame in raster order, masked out-of-window keys),
affinity / temperature, `torch.topk` over the list on the CPU (rule "cpu"), or the earlier
entries of the list among values equal to the k-th, as CUDA's topk keeps them (rule "cuda")."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vcorr.propagation import propagate
from vcorr.propagation.affinity import topk_as_original

K_DIM = 8
CODEBOOK = 12  # few vectors: many exact ties, enough that one entry rarely fills the k


def _codebook_features(frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Features from a few unit vectors with four entries 0.5: every dot product (and its
    division by the temperature) is computed exactly alike in any order, so equal features give
    bit-equal affinities in vcorr and in the reference. Frame 1 repeats frame 0 and frame 2
    repeats frame 1's upper half, as in a clip that starts still."""
    generator = torch.Generator().manual_seed(seed)
    supports = list(itertools.combinations(range(K_DIM), 4))
    picks = torch.randperm(len(supports), generator=generator)[:CODEBOOK]
    codebook = torch.zeros(len(picks), K_DIM)
    for row, pick in enumerate(picks.tolist()):
        codebook[row, list(supports[pick])] = 0.5
    ids = torch.randint(0, len(picks), (frames, height, width), generator=generator)
    ids[1] = ids[0]
    ids[2, : height // 2] = ids[1, : height // 2]
    return codebook[ids].permute(0, 3, 1, 2).contiguous()  # [T, K, H, W]


def _allowed(height: int, width: int, shape: str, size: float) -> torch.Tensor:
    """[key, query] bool: the protocol's window on the grid."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dy = y.reshape(-1, 1) - y.reshape(1, -1)
    dx = x.reshape(-1, 1) - x.reshape(1, -1)
    if shape == "circle":
        return (dy * dy + dx * dx).to(torch.float32) ** 0.5 < size
    return (dy.abs() <= size) & (dx.abs() <= size)


def _original_topk(affinity: torch.Tensor, k: int, ties: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The originals' call on `affinity` [1, list, queries] (already / temperature): topk over
    dim 1, on the CPU; or, for CUDA's choice, the first k of a stable descending sort."""
    if ties == "cpu":
        return affinity.topk(k=k, dim=1)
    values, index = torch.sort(affinity, dim=1, descending=True, stable=True)
    return values[:, :k], index[:, :k]


def _reference(feats, labels0, entries_of, unmasked, allowed, topk, temp, ties, step=32):
    """Soft labels of every frame: Spa-then-Temp's masked_attention_efficient (queries in chunks
    of `step`, -inf outside the window) or HVC's batched_affinity (+ -1e10 outside, then
    / temperature), over the original's key list `entries_of(t)`; the first `unmasked` entries
    have no window."""
    height, width = feats.shape[-2:]
    keys = F.normalize(feats, dim=1).flatten(2)  # [T, K, hw]
    soft = [labels0.flatten(1)]
    for t in range(1, len(feats)):
        entries = entries_of(t)
        key_vec = torch.cat([keys[e] for e in entries], 1)[None]  # [1, K, E * hw]
        mask = torch.cat([torch.ones_like(allowed) if i < unmasked else allowed for i in range(len(entries))])
        values = torch.cat([soft[e] for e in entries], 1)  # [M, E * hw]
        out = []
        for start in range(0, height * width, step):
            query = keys[t][None, :, start : start + step]
            affinity = torch.einsum("bci,bcj->bij", key_vec, query)  # [1, E * hw, step]
            window = mask[:, start : start + step][None]
            if unmasked == 0:  # Spa-then-Temp
                affinity = (affinity / temp).masked_fill(~window, float("-inf"))
            else:  # HVC / videowalk
                affinity = (affinity + (~window).float() * -1e10) / temp
            top, index = _original_topk(affinity, topk, ties)
            weights = torch.softmax(top, dim=1)[0]  # [k, step]
            out.append((values[:, index[0]] * weights).sum(1))
        soft.append(torch.cat(out, 1))
    return torch.stack(soft).reshape(len(feats), -1, height, width)


def _stt_case(seed, height, width, ties, with_first_neighbor=True, **params):
    feats = _codebook_features(6, height, width, seed)
    label0 = (np.arange(height * width).reshape(height, width) % 5).astype(np.uint8)
    ours = propagate(feats, label0, "stt", with_first_neighbor=with_first_neighbor, ties=ties, **params)
    labels0 = F.one_hot(torch.from_numpy(label0).long()).permute(2, 0, 1).float()
    precede = params["precede"]
    expected = _reference(
        feats, labels0,
        entries_of=lambda t: [0] + list(range(max(0, t - precede), t)),
        unmasked=0 if with_first_neighbor else 1,
        allowed=_allowed(height, width, "square", params["nrange"] // 2),
        topk=params["topk"], temp=params["temp"], ties=ties,
    )
    return ours.soft, expected


def _crw_case(seed, height, width, ties, **params):
    feats = _codebook_features(6, height, width, seed)
    label0 = (np.arange(height * width).reshape(height, width) % 5).astype(np.uint8)
    ours = propagate(feats, label0, "crw", num_channels=5, ties=ties, **params)
    labels0 = F.one_hot(torch.from_numpy(label0).long(), 5).permute(2, 0, 1).float()
    labels0 = F.interpolate(labels0[None], (height, width), mode="bilinear", align_corners=True)[0]
    cxt_size = params["cxt_size"]
    expected = _reference(
        feats, labels0,
        entries_of=lambda t: [0] + [max(s, 0) for s in range(t - cxt_size, t)],
        unmasked=1, allowed=_allowed(height, width, "circle", params["radius"]),
        topk=params["topk"], temp=params["temp"], ties=ties,
    )
    return ours.soft, expected


# list length n vs 64 * k: both of ATen's CPU selections (nth_element / partial_sort's heap)
STT_SHAPES = [(7, 6, dict(precede=2, topk=6, temp=0.07, nrange=4)),  # n <= 126 < 384
              (12, 10, dict(precede=3, topk=2, temp=0.07, nrange=6))]  # n >= 240 >= 128
CRW_SHAPES = [(7, 6, dict(cxt_size=3, radius=2.5, topk=6, temp=0.1)),  # n = 168 < 384
              (10, 10, dict(cxt_size=4, radius=2, topk=5, temp=0.1))]  # n = 500 >= 320


@pytest.mark.parametrize("ties", ["cpu", "cuda"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", range(2))
@pytest.mark.parametrize("with_first_neighbor", [True, False])
def test_stt_ties_as_the_original(ties, seed, shape, with_first_neighbor):
    height, width, params = STT_SHAPES[shape]
    ours, expected = _stt_case(seed, height, width, ties, with_first_neighbor, **params)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("ties", ["cpu", "cuda"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", range(2))
def test_crw_ties_as_the_original(ties, seed, shape):
    height, width, params = CRW_SHAPES[shape]
    ours, expected = _crw_case(seed, height, width, ties, **params)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def test_the_rules_differ_on_these_inputs():
    """The cases above decide between the rules: each rule's reference differs from the other's
    (by more than the tolerance), so a wrong rule fails them."""
    for case, shapes in ((_stt_case, STT_SHAPES), (_crw_case, CRW_SHAPES)):
        for height, width, params in shapes:
            _, cpu = case(0, height, width, "cpu", **params)
            _, cuda = case(0, height, width, "cuda", **params)
            assert (cpu - cuda).abs().max() > 1e-3, (case.__name__, height, width)


def test_topk_as_original_on_random_rows_with_forced_ties():
    """The row-level call equals the originals' `torch.topk` over dim 1 of [1, n, queries] (rule
    "cpu": the same selected columns, heap history included) and the lowest-index choice
    (rule "cuda"), on rows of few distinct values with -inf stretches, in both selection
    regimes."""
    generator = torch.Generator().manual_seed(0)
    rules_differ = []
    for n, k in [(90, 10), (640, 10), (700, 10), (3000, 15)]:
        # about three keys per level: ties at the k-th value, and larger values after them
        levels = torch.randint(0, max(8, n // 5), (n, 33), generator=generator).float() / 4
        levels[torch.rand(n, 33, generator=generator) < 0.4] = float("-inf")
        temp = 0.07
        ours_cpu = topk_as_original(levels.t().contiguous(), k, temp, "cpu")
        _, original = (levels[None] / temp).topk(k=k, dim=1)
        assert torch.equal(ours_cpu, original[0].t()), (n, k)
        ours_cuda = topk_as_original(levels.t().contiguous(), k, temp, "cuda")
        expected = torch.sort(levels / temp, dim=0, descending=True, stable=True).indices[:k].t()
        assert torch.equal(ours_cuda.sort(1).values, expected.sort(1).values), (n, k)
        rules_differ.append(not torch.equal(ours_cpu.sort(1).values, ours_cuda.sort(1).values))
    assert rules_differ[1:] == [True] * 3  # the heap's choice is not the lowest-index one


def test_cpu_topk_ignores_minus_inf_after_the_first_k_when_it_uses_its_heap():
    """What the shortened lists rely on (vcorr.propagation.affinity `_as_original`): for
    n >= 64 k, dropping -inf entries after the first k and padding with -inf at the end (n stays
    >= 64 k) keeps torch.topk's choice and order on the CPU, ties included."""
    generator = torch.Generator().manual_seed(1)
    for n, k in [(700, 10), (1500, 10), (5000, 15), (700, 5)]:
        for _ in range(50):
            row = torch.randint(0, 6, (n,), generator=generator).float() / 4
            row[torch.rand(n, generator=generator) < 0.7] = float("-inf")
            kept = (torch.arange(n) < k) | (row > float("-inf"))
            columns = kept.nonzero().squeeze(1)
            pad = max(0, 64 * k - len(columns))
            short = torch.cat([row[columns], torch.full((pad,), float("-inf"))])
            columns = torch.cat([columns, torch.zeros(pad, dtype=torch.long)])
            assert torch.equal(columns[torch.topk(short, k).indices], torch.topk(row, k).indices)

