"""Equality with another implementation's outputs that holds on every CPU: every differing output
place (pixel of an id map, joint of a frame) is classified by vcorr's own margins.

Float rounding differs between implementations and CPU kernels (AVX2 / AVX-512, MKL paths,
thread counts), so outputs can only be equal where the decisions behind them are not near-ties.
Three decisions can flip within rounding:

- the arg-max of the read-out (id maps): the best and the other's label at the pixel are within
  what the soft labels' rounding can move them (`Tolerance.label`, after the min-max
  normalisation of Spa-then-Temp, whose per-channel min and max move too);
- the top-k of a query: the k-th selected and the best unselected key of another position have
  affinities within `Tolerance.affinity` (raw cosine), so the other run may keep the other key.
  That changes the query's soft labels by at most the weights of the keys that may swap times
  their label differences, and the change propagates to every later query that selected that
  key (weights times the change, along the recorded selections: the perturbation bound);
- the top-5 of a JHMDB heat map read-out (`vcorr.metrics.pck.heatmaps_to_coords`): pixels whose
  values are within the rounding (plus the perturbation bound) of the 5th largest may enter the
  top-5, and the coordinates are a weighted mean of five of them.

A differing place gets the first kind that explains it (`KINDS`, in this order): `equal` (ids:
the same id; joints: within the coordinate shift that the value rounding alone allows, same top-5),
`label_near_tie` / `heatmap_near_tie` (the read-out decision alone, rounding only),
`affinity_near_tie` (plus top-k flips at this frame), `downstream` (plus flips at earlier frames
carried along the selections), or `real_deviation`. A comparison is faithful when there is no real
deviation and no more differing places than the cap (`Tolerance.max_differing` of any frame's
pixels, `Tolerance.max_differing_joints` of a clip's joint-frames).

The margins come from a `vcorr.propagation.margins.MarginRecorder` of vcorr's run;
`vcorr.evaluation.fidelity` runs a benchmark with one and compares with an original's folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from vcorr.errors import VcorrError
from vcorr.propagation.margins import ChainSelection, MarginRecorder

KINDS = ("equal", "label_near_tie", "heatmap_near_tie", "affinity_near_tie", "downstream", "real_deviation")

# Queries per chunk when comparing swappable keys' labels (bounds the [q, k, k + E, M] tensor).
_CHUNK = 256


@dataclass(frozen=True)
class Tolerance:
    """Rounding scales and the cap (rounding scales: benchmarks/rounding_scale.py)."""

    # Measured largest differences between two float32 runs of one case (float64 encoders, AVX2
    # vs AVX-512 kernels): affinity 1.0e-6, soft label 1.9e-6, joint 2e-4 px. vcorr and an
    # original each round on their own, so two affinities may differ by twice that and swap order.
    affinity: float = 3e-6  # raw cosine: two affinities this close may swap order on another CPU
    label: float = 1e-5  # soft label units: rounding of a soft label value (any channel)
    # px: joints this close are equal. The read-out renormalises five values in float32 and
    # weights positions up to the frame size with them: 1.2e-7 x 5 x 320 px = 2e-4 px of rounding.
    coordinate: float = 1e-3
    # The cap, about twice the worst measured: 0.074 % of a frame (vcorr against the original on
    # one machine), 0.071 % (the fixtures made elsewhere, AMD EPYC AVX2); JHMDB 14 of 150
    # joint-frames (stt-jhmdb-a: random weights put every affinity of the clip within 1e-4).
    max_differing: float = 0.0015  # at most this fraction of any frame's pixels differ
    max_differing_joints: float = 0.15  # at most this fraction of a clip's joint-frames differ


@dataclass
class Bounds:
    """Per frame `[h, w]` bounds on how far near-tie top-k flips can move any soft label channel:
    `this_frame` from the flips of the frame's own queries, `carried` with the flips of earlier
    frames carried along the selections."""

    this_frame: list[torch.Tensor]
    carried: list[torch.Tensor]


def perturbation_bounds(recorder: MarginRecorder, affinity: float) -> Bounds:
    """The `Bounds` of a recorded run when affinities within `affinity` may swap order."""
    soft = torch.stack([s.flatten(1).t().float() for s in recorder.soft])  # [T, hw, M]
    height, width = recorder.soft[0].shape[-2:]
    label_range = float(soft[0].abs().max()) if soft.numel() else 0.0
    this_frame, carried = torch.zeros(len(soft), height * width), torch.zeros(len(soft), height * width)
    for t in range(1, len(soft)):
        for chain in recorder.selections.get(t, []):
            carried[t] += _gather(carried, chain.frames, chain.positions).mul(chain.weights).sum(1)
            this_frame[t] += _swap_bound(chain, soft, None, affinity, label_range)
            carried[t] += _swap_bound(chain, soft, carried, affinity, label_range)
        # labels are convex combinations of the first frame's: they cannot move by more
        this_frame[t].clamp_(max=label_range)
        carried[t].clamp_(max=label_range)
    return Bounds(list(this_frame.view(-1, height, width)), list(carried.view(-1, height, width)))


def _gather(per_frame: torch.Tensor, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`per_frame[f, p]` (`[T, hw]` or `[T, hw, M]`) at keys (frames, positions); padding keys
    (frame -1) read frame 0 and carry weight 0."""
    return per_frame[frames.long().clamp(min=0), positions.long()]


def _swap_bound(
    chain: ChainSelection, soft: torch.Tensor, carried: torch.Tensor | None, affinity: float, label_range: float
) -> torch.Tensor:
    """[hw] bound on the change of a chain's prediction if keys within `affinity` of the cut
    swap: selected keys within `affinity` of the best unselected one (the band) may each give
    their weight to a ranked key of the band (any within `affinity` below the k-th; keys equal
    to the k-th may be ranked on either side, as exact ties are), changing the labels by at
    most their difference plus both keys' carried bounds; swapping a key for a copy of itself
    changes nothing. A ranked list too short to see the band's end counts the whole label range."""
    k = chain.similarity.shape[1]
    selected, ranked = chain.similarity, chain.ranked_similarity
    kth = torch.where(torch.isfinite(selected), selected, torch.inf).amin(1)
    best_unselected = ranked[:, k] if ranked.shape[1] > k else torch.full_like(kth, -torch.inf)
    selected_band = torch.isfinite(selected) & (selected <= best_unselected[:, None] + affinity)
    band = torch.isfinite(ranked) & (ranked >= kth[:, None] - affinity) & (ranked <= best_unselected[:, None] + affinity)
    bound = torch.zeros(selected.shape[0])
    rows = selected_band.any(1).nonzero().squeeze(1)
    for part in rows.split(_CHUNK):
        sel_frames, sel_positions = chain.frames[part], chain.positions[part]
        other_frames, other_positions = chain.ranked_frames[part], chain.ranked_positions[part]
        labels = _gather(soft, sel_frames, sel_positions)  # [q, k, M]
        other_labels = _gather(soft, other_frames, other_positions)  # [q, E, M]
        change = (labels[:, :, None] - other_labels[:, None]).abs().amax(-1)  # [q, k, E]
        if carried is not None:  # the selected key's own carried bound is counted by the caller
            change += _gather(carried, other_frames, other_positions)[:, None]
        same_key = (sel_frames[:, :, None] == other_frames[:, None]) & (sel_positions[:, :, None] == other_positions[:, None])
        pairs = selected_band[part, :, None] & band[part, None] & ~same_key
        worst = torch.where(pairs, change, 0.0).amax(2)  # [q, k]
        truncated = band[part, -1]
        if bool(truncated.any()):
            extra = 2 * float(carried.max()) if carried is not None else 0.0
            worst[truncated] = torch.where(selected_band[part][truncated], label_range + extra, 0.0)
        bound[part] = (worst * chain.weights[part]).sum(1)
    return bound


def _upsample(grid: torch.Tensor, size: tuple[int, int], protocol: str) -> torch.Tensor:
    """A `[..., h, w]` map at the read-out size, as the protocol upsamples soft labels (bilinear,
    align_corners True for crw, False for stt): a convex combination, so bounds stay bounds."""
    from vcorr.propagation.adapters import ALIGN_CORNERS

    flat = grid.reshape(-1, *grid.shape[-2:])[None].float()
    up = F.interpolate(flat, size, mode="bilinear", align_corners=ALIGN_CORNERS[protocol])[0]
    return up.reshape(*grid.shape[:-2], *size)


@dataclass
class FrameComparison:
    """One frame's places (pixels or joints) by kind, and the kind of each differing place."""

    places: int
    counts: Counter = field(default_factory=Counter)
    where: dict[str, list] = field(default_factory=dict)  # kind -> differing places ((y, x) or joint)

    @property
    def differing(self) -> int:
        return self.places - self.counts["equal"]


def _add(comparison: FrameComparison, kind: str, place) -> None:
    comparison.counts[kind] += 1
    if kind != "equal":
        comparison.where.setdefault(kind, []).append(place)


def classify_ids(
    recorder: MarginRecorder, t: int, ours: np.ndarray, other: np.ndarray, bounds: Bounds, tolerance: Tolerance
) -> FrameComparison:
    """Frame `t`'s id map `ours` (vcorr's, as written) against `other`'s, every pixel classified."""
    ours, other = np.asarray(ours), np.asarray(other)
    if ours.shape != other.shape:
        raise VcorrError(f"frame {t}: id maps of size {other.shape} and vcorr's {ours.shape} differ")
    comparison = FrameComparison(places=ours.size)
    differing = np.argwhere(ours != other)
    comparison.counts["equal"] = ours.size - len(differing)
    if not len(differing):
        return comparison
    if t == 0 and recorder.protocol == "stt":
        # Spa-then-Temp's frame 0 is a nearest resize of the annotation: no decision to flip.
        for y, x in differing:
            _add(comparison, "real_deviation", (int(y), int(x)))
        return comparison
    from vcorr.propagation.protocols import read_out

    soft = recorder.soft[t]
    align = recorder.protocol == "crw"
    if not torch.equal(read_out(soft, recorder.out_size, align, recorder.min_max), torch.from_numpy(ours)):
        raise VcorrError(f"frame {t}: vcorr's written ids are not the recorded run's read-out (another run?)")
    up = _upsample(soft, recorder.out_size, recorder.protocol)  # [M, H, W]
    rows, cols = differing[:, 0], differing[:, 1]
    a = torch.from_numpy(ours[rows, cols].astype(np.int64))
    b = torch.from_numpy(other[rows, cols].astype(np.int64))
    ys, xs = torch.from_numpy(rows), torch.from_numpy(cols)
    levels = (
        ("label_near_tie", None),
        ("affinity_near_tie", bounds.this_frame[t]),
        ("downstream", bounds.carried[t]),
    )
    unexplained = torch.ones(len(a), dtype=torch.bool)
    kinds = np.full(len(a), "real_deviation", dtype=object)
    for kind, grid in levels:
        flips = torch.zeros(recorder.out_size) if grid is None else _upsample(grid, recorder.out_size, recorder.protocol)
        possible = _argmax_may_flip(up, flips, tolerance.label, recorder.min_max, ys, xs, a, b)
        kinds[(possible & unexplained).numpy()] = kind
        unexplained &= ~possible
    for (y, x), kind in zip(differing, kinds):
        _add(comparison, kind, (int(y), int(x)))
    return comparison


def _argmax_may_flip(
    up: torch.Tensor, flips: torch.Tensor, rounding: float, min_max: bool, ys, xs, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """[n] bool: may the read-out at pixels (ys, xs) pick channel `b` over `a` when the upsampled
    soft labels `up` [M, H, W] move by up to `flips` [H, W] plus `rounding`? A channel that is
    zero everywhere stays zero under rounding (products of zeros); only flips can bring it in.
    With the min-max normalisation each channel's min and max over the frame move too (interval
    bounds on (u - lo) / (hi - lo), which grows with u and shrinks with lo and hi as u <= hi)."""
    if bool((b >= up.shape[0]).any()):  # an id vcorr's labels have no channel for
        result = torch.zeros(len(b), dtype=torch.bool)
        inside = b < up.shape[0]
        result[inside] = _argmax_may_flip(up, flips, rounding, min_max, ys[inside], xs[inside], a[inside], b[inside])
        return result
    empty = up.flatten(1).amax(1) <= 0
    reachable = ~empty[b] | (flips[ys, xs] > 0)
    delta = flips + rounding
    value_a, value_b, d = up[a, ys, xs], up[b, ys, xs], delta[ys, xs]
    if not min_max:
        return reachable & (value_b + d >= value_a - d)
    low, high = up - delta, up + delta
    lo_min, lo_max = low.flatten(1).amin(1), high.flatten(1).amin(1)
    hi_min, hi_max = low.flatten(1).amax(1), high.flatten(1).amax(1)
    certain = (hi_min - lo_min > 0) & ~empty
    n_max_b = torch.where(certain[b], (value_b + d - lo_min[b]) / (hi_min[b] - lo_min[b] + 1e-12), torch.inf)
    n_min_a = torch.where(certain[a], (value_a - d - lo_max[a]) / (hi_max[a] - lo_max[a] + 1e-12), -torch.inf)
    return reachable & (n_max_b >= n_min_a)


def joint_maps(recorder: MarginRecorder, t: int) -> torch.Tensor:
    """Frame `t`'s `[J, H, W]` heat maps as vcorr read its joints from them (`vcorr.propagation.
    adapters.keypoint_coords`; Spa-then-Temp's frame 0 from its label round trip)."""
    if t == 0 and recorder.protocol == "stt":
        from vcorr.propagation.stt_labels import first_frame_output

        return first_frame_output(recorder.label0, recorder.out_size).float()
    return _upsample(recorder.soft[t], recorder.out_size, recorder.protocol)


def joint_deltas(recorder: MarginRecorder, bounds: Bounds, t: int) -> dict[str, torch.Tensor]:
    """Frame `t`'s `Bounds` at the read-out size, as `classify_joints` takes them."""
    return {
        "affinity_near_tie": _upsample(bounds.this_frame[t], recorder.out_size, recorder.protocol),
        "downstream": _upsample(bounds.carried[t], recorder.out_size, recorder.protocol),
    }


def classify_joints(
    maps: torch.Tensor, ours: np.ndarray, other: np.ndarray, deltas: dict[str, torch.Tensor | None],
    tolerance: Tolerance,
) -> FrameComparison:
    """One frame's joints `ours` `[2, J]` (read from `maps` `[J, H, W]`) against `other`'s.

    `deltas`: {kind: `[H, W]` bound on the maps' change from top-k flips} for
    "affinity_near_tie" and "downstream" (`joint_deltas`; {}: rounding alone); the value rounding
    `tolerance.label` is added to each. The coordinates are the top-5 pixels' positions weighted
    by their values: with the same top-5 they move by at most sum(delta_i |p_i - c|) /
    (sum(v_i) - sum(delta_i)); where more pixels may enter the top-5, anywhere inside the box of
    those pixels."""
    from vcorr.metrics.pck import TOP_K

    ours, other = np.asarray(ours, np.float64), np.asarray(other, np.float64)
    if ours.shape != other.shape or ours.ndim != 2 or ours.shape[0] != 2:
        raise VcorrError(f"joint coordinates must be [2, joints] alike, got {other.shape} and vcorr's {ours.shape}")
    comparison = FrameComparison(places=ours.shape[1])
    height, width = maps.shape[-2:]
    grid_y, grid_x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    positions = torch.stack([grid_x.flatten(), grid_y.flatten()], 1).double()  # (x, y)
    levels = [("equal", None), *((kind, deltas.get(kind)) for kind in ("affinity_near_tie", "downstream"))]
    for joint in range(ours.shape[1]):
        values = maps[joint].flatten().double()
        centre = torch.from_numpy(ours[:, joint])
        target = torch.from_numpy(other[:, joint])
        distance = float((centre - target).norm())
        top = torch.topk(values, TOP_K).indices
        kind = "real_deviation"
        for level, grid in levels:
            delta = torch.full((height * width,), tolerance.label, dtype=torch.float64)
            if grid is not None:
                delta += grid.flatten().double()
            weight = values[top].sum() - delta[top].sum()
            shift = (delta[top] * (positions[top] - centre).norm(dim=1)).sum()
            if distance <= tolerance.coordinate or (bool(weight > 0) and distance <= float(shift / weight)):
                kind = level
                break
            fifth = torch.topk(values - delta, TOP_K).values[-1]
            box = positions[values + delta >= fifth]
            # the other's coordinate is a float32 weighted mean of its top-5: it may round to just outside the box
            slack = tolerance.coordinate
            inside = (target >= box.amin(0) - slack) & (target <= box.amax(0) + slack)
            if len(box) > TOP_K and bool(inside.all()):
                kind = "heatmap_near_tie" if level == "equal" else level
                break
        _add(comparison, kind, joint)
    return comparison
