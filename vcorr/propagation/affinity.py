"""Top-k affinities of a query frame against a context memory, without dense affinity matrices.

The context of a query frame is an ordered list of entries, as in the original code's
concatenated key list: at most one *dense* entry first (a reference frame every query attends to
in full, crw's long-term frame or Spa-then-Temp's frame 0 without its window) followed by
*windowed* entries (each query attends only to the keys inside its spatial window). The same frame
may occur several times in the list (crw repeats the reference frame while ``t <= C``;
Spa-then-Temp lists frame 0 twice while ``t <= P``); it is scored once and its candidates are
counted with their multiplicity, so a key present m times occupies m of the k slots exactly as it
does in the original list.

Selection rule: the k candidates with the largest affinity. Exact ties at the k-th value, where
they matter, are broken as the original does it, by `ties` (`TIE_RULES`):

- ``"cpu"`` (default): what `torch.topk` returns on the CPU, where the originals' reference
  outputs (../shared/testdata) were made. Both originals concatenate their keys in one list per
  query, context entry by entry (Spa-then-Temp: frame 0, then frames ``max(0, t-P) .. t-1``;
  HVC / videowalk: the reference frame, then ``max(s, t0)`` for ``s = t-C .. t-1``), each frame
  ``[h * w]`` in raster order, out-of-window keys masked (Spa-then-Temp ``-inf``, HVC
  ``(A - 1e10) / tau``: all equal and below every real affinity either way), scale it by
  ``1 / temperature`` and call ``torch.topk(k)`` over the list. On the CPU, ATen keeps among tied
  values what its selection leaves (``k * 64 <= n``: ``std::partial_sort``'s heap, whose history
  depends on every value of the list and its order; else ``std::nth_element``): no rule on the
  tied candidates alone reproduces it. So a query whose choice is open (`_needs_original_row`)
  gets its list rebuilt exactly in the original's layout and `torch.topk` is run on it on the CPU
  (same n, k and dtype, so the same ATen path).
- ``"cuda"``: what `torch.topk` returns on a GPU (the originals under CUDA): among values equal
  to the k-th, the earlier ones in the original's list (its radix-select gather writes them in
  index order). The same rebuilt list, ranked by (value descending, list position ascending).

A choice is open only where tied candidates are different keys (frame, position) and not all of
them fit in the k; copies of one key (frame 0 listed twice, a dense frame also windowed) give the
same labels whichever is kept. Such queries are rare (exact ties come from pixel-identical image
regions), so only they pay for a dense row; every other query is answered from the windows,
deterministically (`ordered_topk`), and needs no rule. Near-ties within rounding are not
reproduced by any rule: the originals' GEMMs and vcorr's round differently. Which rule applies is
independent of the device vcorr runs on ("cpu" runs its `torch.topk` on the CPU); on a GPU the
originals' affinities also differ (HVC runs under fp16 autocast), so "cuda" reproduces CUDA's tie
rule, not its values.

Work per windowed frame is restricted to the windows: queries are tiled (`window.make_tiles`) and
each tile is multiplied, in one batched GEMM over key rows, against the key rectangle of all
memory slots at once; the memory is laid out ``[h, w, slot, K]`` so that the rectangle is a
strided view (no gathering copy) and the scores come out ``[key row, query, key col, slot]``.
The top-k is then found in two exact stages: every key position of a query is a "group" of
candidates (one per windowed entry); the maximum over the slots (the contiguous inner dimension)
ranks the groups, and the window mask (0 / -inf) is applied to these maxima only; the k best
groups contain the k best candidates (a candidate outside them would be beaten by the maxima of
k groups), so only their entries are ranked individually.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vcorr.propagation.parameters import TIE_RULES
from vcorr.propagation.window import Tile, Window, make_tiles


def ordered_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of each row of `values` [N, L] by (value descending, column ascending).

    Returns values and column indices [N, k], in that order, and `tied` [N] bool: the k-th value
    is also held by an unselected column. `torch.topk` leaves the choice among equal values open;
    tied rows are resolved by a stable sort, and the selected k are put in rule order.
    """
    top_values, top_index = torch.topk(values, k, dim=1, largest=True, sorted=True)
    tied = (values >= top_values[:, k - 1 : k]).sum(dim=1) > k
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        sorted_values, sorted_index = torch.sort(values[rows], dim=1, descending=True, stable=True)
        top_values[rows] = sorted_values[:, :k]
        top_index[rows] = sorted_index[:, :k]
    top_index, by_index = top_index.sort(dim=1)
    top_values = top_values.gather(1, by_index)
    top_values, by_value = top_values.sort(dim=1, descending=True, stable=True)
    return top_values, top_index.gather(1, by_value), tied


def topk_as_original(row_scores: torch.Tensor, k: int, temperature: float, ties: str) -> torch.Tensor:
    """The columns [N, k] the original's `torch.topk` keeps on each row of `row_scores` [N, n]:
    raw affinities in the original's list order, out-of-window keys -inf. Scaled by
    ``1 / temperature`` first, as the originals rank them (scaling can merge close values)."""
    if ties == "cpu":
        # on the CPU from the division on: ATen's CUDA kernel multiplies by the reciprocal
        scaled = row_scores.cpu() / temperature
        return torch.topk(scaled, k, dim=1).indices.to(row_scores.device)
    return ordered_topk(row_scores / temperature, k)[1]


def _require_layout(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    """Flat indexing (`view(-1)[...]`) is only right on a contiguous tensor of this shape."""
    if tuple(tensor.shape) != tuple(shape) or not tensor.is_contiguous():
        raise RuntimeError(
            f"{what}: expected a contiguous tensor of shape {tuple(shape)}, got {tuple(tensor.shape)} "
            f"(contiguous: {tensor.is_contiguous()}); the flat indexing would read the wrong entries"
        )


def _pad_candidates(
    values: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fewer than k candidates (tiny frames): pad with -inf, which get weight 0 like the original's
    masked (-inf / -1e10) entries."""
    missing = k - values.shape[1]
    if missing <= 0:
        return values, rows, keys
    pad_values = values.new_full((values.shape[0], missing), float("-inf"))
    pad_rows = rows.new_zeros((rows.shape[0], missing))
    return torch.cat([values, pad_values], 1), torch.cat([rows, pad_rows], 1), torch.cat([keys, pad_rows], 1)


@dataclass
class _Boundary:
    """One pruning stage's k-th value per query and whether an unselected group reaches it."""

    value: torch.Tensor  # [Q]
    tied: torch.Tensor  # [Q] bool


def _needs_original_row(
    values: torch.Tensor,
    keys: torch.Tensor,
    kth: torch.Tensor,
    tied: torch.Tensor,
    boundaries: list[_Boundary],
) -> torch.Tensor:
    """[Q] bool: queries whose top-k may not be determined by the values, so the tie rule decides.

    That is: the k-th value `kth` (finite: -inf candidates get weight 0 whichever are kept) is
    held by more candidates than fit and they are not all one key (`keys`: frame and position),
    or a pruning stage dropped a group reaching `kth` (then two different keys reach it, the
    group's and a kept one; a group below `kth` holds none of the k, and one above it is never
    dropped: k groups above `kth` would put k candidates above it). Every query whose choice is
    open is caught so (a key missing from the candidates implies a dropped group reaching `kth`);
    a few whose choice is not open may be too, at the cost of one dense row."""
    open_choice = torch.zeros_like(tied)
    for boundary in boundaries:
        open_choice |= boundary.tied & (boundary.value == kth)
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        at_kth = values[rows] == kth[rows, None]
        row_keys = keys[rows]
        lowest = torch.where(at_kth, row_keys, torch.iinfo(row_keys.dtype).max).amin(1)
        highest = torch.where(at_kth, row_keys, -1).amax(1)
        open_choice[rows] |= lowest != highest
    return open_choice & (kth > float("-inf"))


@dataclass
class _DenseCandidates:
    """A dense entry's k best keys per query of a tile (`values`, value `rows`), its pruning
    stages' boundaries, and the tile's scores against the whole frame [Q, hw]."""

    values: torch.Tensor
    rows: torch.Tensor
    boundaries: list[_Boundary]
    scores: torch.Tensor


@dataclass
class ContextList:
    """One reference chain's context: an optional dense entry, then windowed entries in order.

    `windowed_slots` lists the memory slot of every windowed entry, repeated frames repeated."""

    dense: int | None
    windowed_slots: list[int]


@dataclass
class TopK:
    """Per query position: the k selected affinities (raw cosine similarities) and the row of
    `ContextMemory.values` holding each one's label."""

    similarity: torch.Tensor  # [hw, k]
    value_rows: torch.Tensor  # [hw, k]


class ContextMemory:
    """Normalised features and labels of the frames a protocol keeps, scored by windowed top-k.

    Windowed frames live in `capacity` slots (`keys` ``[h, w, slot, K]``); dense reference frames
    are kept apart (``[hw, K]``). Labels of both live in one table `values` ``[rows, hw, M]``:
    slot s at row s, dense reference d at row ``capacity + d``. `temperature` and `ties` are
    the protocol's: exact ties are broken on affinity / temperature by rule `ties` (module doc).
    """

    def __init__(
        self,
        height: int,
        width: int,
        dim: int,
        channels: int,
        capacity: int,
        window: Window,
        tile_size: tuple[int, int],
        device: torch.device,
        affinity_dtype: torch.dtype = torch.float32,
        temperature: float = 1.0,
        ties: str = "cpu",
    ) -> None:
        if ties not in TIE_RULES:
            raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
        self.height, self.width, self.capacity = height, width, capacity
        self.affinity_dtype = affinity_dtype
        self.temperature, self.ties = float(temperature), ties
        self.keys = torch.zeros(height, width, capacity, dim, device=device, dtype=affinity_dtype)
        self.values = torch.zeros(capacity, height * width, channels, device=device)
        self.dense_keys: list[torch.Tensor] = []
        self.dense_frames: list[int] = []
        self.tiles: list[Tile] = make_tiles(height, width, window, tile_size, device)
        self.slot_of: dict[int, int] = {}  # frame index -> slot

    def store(self, frame: int, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep a frame for windowed attention: `features` [K, h, w] normalised, `labels` [M, h, w]."""
        used = set(self.slot_of.values())
        free = [slot for slot in range(self.capacity) if slot not in used]
        if not free:
            raise RuntimeError("context memory is full: evict frames before storing new ones")
        slot = free[0]
        self.keys[:, :, slot] = features.permute(1, 2, 0).to(self.affinity_dtype)
        self.values[slot] = labels.flatten(1).t()
        self.slot_of[frame] = slot

    def keep_only(self, frames: set[int]) -> None:
        """Forget the windowed frames not in `frames` (their slots are reused)."""
        self.slot_of = {f: s for f, s in self.slot_of.items() if f in frames}

    def add_dense(self, frame: int, features: torch.Tensor, labels: torch.Tensor) -> int:
        """Keep frame `frame` for attention in full (every query, no window); returns its dense
        index. If the frame is also stored windowed, it must be with the same features and labels
        (the two are then one key)."""
        self.dense_keys.append(features.flatten(1).t().contiguous().to(self.affinity_dtype))
        self.dense_frames.append(frame)
        self.values = torch.cat([self.values, labels.flatten(1).t()[None]], 0)
        return len(self.dense_keys) - 1

    def select(
        self, query: torch.Tensor, contexts: list[ContextList], k: int, ranked: int | None = None
    ) -> list[TopK] | tuple[list[TopK], list[TopK]]:
        """The top-k context keys of every position of `query` [K, h, w] (normalised), per context.

        `ranked`: also the top-`ranked` of each context from the same scores (the margins
        diagnostic, vcorr.propagation.margins), returned second; among exact ties in any order
        (the diagnostic counts ties on both sides of the cut), so without the tie rule's rows."""
        hw = self.height * self.width
        query_hwk = query.permute(1, 2, 0).to(self.affinity_dtype)
        sizes = [k] if ranked is None else [k, ranked]
        results = [
            [
                TopK(
                    similarity=query.new_empty((hw, size), dtype=torch.float32),
                    value_rows=torch.empty((hw, size), dtype=torch.long, device=query.device),
                )
                for _ in contexts
            ]
            for size in sizes
        ]
        slot_lists = [
            torch.tensor(c.windowed_slots, dtype=torch.long, device=query.device) for c in contexts
        ]
        needs_windowed = any(c.windowed_slots for c in contexts)
        for tile in self.tiles:
            tile_query = query_hwk[tile.rows, tile.cols].reshape(-1, query_hwk.shape[-1])
            windowed = self._windowed_scores(tile, tile_query) if needs_windowed else None
            dense_cache: dict = {}  # dense -> the tile's scores; (dense, k) -> _DenseCandidates
            group_cache: dict[tuple[int, ...], torch.Tensor] = {}
            for size, tie_rule, size_results in zip(sizes, (True, False), results):
                for context, slots, result in zip(contexts, slot_lists, size_results):
                    top_values, value_rows = self._tile_topk(
                        tile, tile_query, windowed, dense_cache, group_cache, context, slots, size, tie_rule
                    )
                    result.similarity[tile.query_index] = top_values
                    result.value_rows[tile.query_index] = value_rows
        return results[0] if ranked is None else (results[0], results[1])

    def _tile_topk(
        self,
        tile: Tile,
        tile_query: torch.Tensor,
        windowed: torch.Tensor | None,
        dense_cache: dict,
        group_cache: dict,
        context: ContextList,
        slots: torch.Tensor,
        k: int,
        tie_rule: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One context's top-k for the tile's queries: similarities and value rows [Q, k];
        `tie_rule=False` leaves exact ties at the cut as `ordered_topk` breaks them."""
        parts_values, parts_rows, parts_keys, boundaries = [], [], [], []
        dense = None
        if context.dense is not None:
            if (context.dense, k) not in dense_cache:
                if context.dense not in dense_cache:  # the scores serve every k
                    dense_cache[context.dense] = (tile_query @ self.dense_keys[context.dense].t()).to(torch.float32)
                dense_cache[context.dense, k] = self._dense_candidates(dense_cache[context.dense], context.dense, k)
            dense = dense_cache[context.dense, k]
            parts_values.append(dense.values)
            parts_rows.append(dense.rows)
            parts_keys.append(dense.rows + self._dense_alias(context.dense))
            boundaries += dense.boundaries
        if len(slots):
            distinct = tuple(sorted(set(context.windowed_slots)))
            if distinct not in group_cache:
                group_cache[distinct] = self._position_maxima(tile, windowed, distinct)
            values, rows, boundary = self._windowed_candidates(tile, windowed, group_cache[distinct], slots, k)
            parts_values.append(values)
            parts_rows.append(rows)
            parts_keys.append(rows)
            boundaries.append(boundary)
        values, rows, keys = _pad_candidates(
            torch.cat(parts_values, 1), torch.cat(parts_rows, 1), torch.cat(parts_keys, 1), k
        )
        top_values, top_index, tied = ordered_topk(values, k)
        value_rows = rows.gather(1, top_index)
        if not tie_rule:
            return top_values, value_rows
        open_choice = _needs_original_row(values, keys, top_values[:, k - 1], tied, boundaries)
        if bool(open_choice.any()):
            queries = open_choice.nonzero().squeeze(1)
            top_values[queries], value_rows[queries] = self._as_original(
                tile, windowed, dense, context, slots, queries, k
            )
        return top_values, value_rows

    def _dense_alias(self, dense: int) -> int:
        """Offset from a dense entry's value rows to those of the same frame's slot (the same
        keys), 0 if the frame is not stored windowed: candidates are compared as keys by it."""
        slot = self.slot_of.get(self.dense_frames[dense])
        if slot is None:
            return 0
        return (slot - self.capacity - dense) * self.height * self.width

    def _windowed_scores(self, tile: Tile, tile_query: torch.Tensor) -> torch.Tensor:
        """Scores of the tile's queries against its key rectangle in every slot, unmasked:
        [R, Q, Cn, slot]."""
        rect = self.keys[tile.key_rows, tile.key_cols]  # [R, Cn, S, K], a strided view
        n_rows, n_cols = rect.shape[0], rect.shape[1]
        rect = rect.reshape(n_rows, n_cols * self.capacity, rect.shape[-1])
        scores = torch.matmul(tile_query, rect.transpose(1, 2))  # [R, Q, Cn * S]
        return scores.to(torch.float32).view(n_rows, -1, n_cols, self.capacity)

    def _position_maxima(
        self, tile: Tile, scores: torch.Tensor, distinct_slots: tuple[int, ...]
    ) -> torch.Tensor:
        """Per query, the best score at every key position of the rectangle over the given slots,
        -inf outside the query's window: [Q, R * Cn] in raster order of the positions."""
        if len(distinct_slots) < self.capacity:
            index = torch.tensor(distinct_slots, dtype=torch.long, device=scores.device)
            scores = scores.index_select(3, index)
        maxima = scores.amax(dim=3) + tile.mask  # [R, Q, Cn]
        return maxima.permute(1, 0, 2).reshape(maxima.shape[1], -1)

    def _windowed_candidates(
        self,
        tile: Tile,
        scores: torch.Tensor,
        position_maxima: torch.Tensor,
        slots: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor, _Boundary]:
        """Candidates of the windowed entries `slots` (in context order, repeats included):
        every entry at the k best key positions of each query, ordered by (position, entry);
        and the position stage's boundary."""
        n_rows, n_queries, n_cols, n_slots = scores.shape
        # The flat indices below address these exact layouts (built by _windowed_scores and make_tiles).
        _require_layout(scores, scores.shape, "windowed scores [R, Q, Cn, slot]")
        _require_layout(tile.mask, (n_rows, n_queries, n_cols), "tile mask [R, Q, Cn]")
        _require_layout(tile.key_index, (n_rows, n_cols), "tile key index [R, Cn]")
        best_maxima, best, tied = ordered_topk(position_maxima, min(k, position_maxima.shape[1]))
        best, _ = best.sort(dim=1)  # back to raster order
        key_row, key_col = best // n_cols, best % n_cols
        query = torch.arange(n_queries, device=scores.device)[:, None]
        start = ((key_row * n_queries + query) * n_cols + key_col) * n_slots  # [Q, g]
        values = scores.view(-1)[start[..., None] + slots]  # [Q, g, E]
        # the window mask again: a selected position may be outside (fewer than k inside)
        values = values + tile.mask.view(n_rows, n_queries, n_cols)[key_row, query, key_col][..., None]
        positions = tile.key_index.view(-1)[best]  # [Q, g]
        rows = slots * (self.height * self.width) + positions[..., None]
        boundary = _Boundary(best_maxima[:, -1], tied)
        return values.reshape(n_queries, -1), rows.reshape(n_queries, -1), boundary

    def _dense_candidates(self, scores: torch.Tensor, dense: int, k: int) -> _DenseCandidates:
        """The k best keys of a dense reference frame for each of the tile's queries, from their
        scores against it [Q, hw], by the same two stages (groups = key rows of the frame)."""
        n_queries = scores.shape[0]
        row_max = scores.view(n_queries, self.height, self.width).amax(dim=2)
        best_row_max, best_rows, rows_tied = ordered_topk(row_max, min(k, self.height))
        best_rows, _ = best_rows.sort(dim=1)
        columns = torch.arange(self.width, device=scores.device)
        positions = (best_rows[..., None] * self.width + columns).reshape(n_queries, -1)
        values = scores.gather(1, positions)  # [Q, g * w]
        top_values, top_index, tied = ordered_topk(values, min(k, values.shape[1]))
        rows = (self.capacity + dense) * (self.height * self.width) + positions.gather(1, top_index)
        boundaries = [_Boundary(best_row_max[:, -1], rows_tied), _Boundary(top_values[:, -1], tied)]
        return _DenseCandidates(top_values, rows, boundaries, scores)

    def _as_original(
        self,
        tile: Tile,
        scores: torch.Tensor | None,
        dense: _DenseCandidates | None,
        context: ContextList,
        slots: torch.Tensor,
        queries: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k of the given queries of the tile (local indices) chosen on the original's
        list (module doc), in chunks of at most ~4M scores: similarities and value rows
        [len(queries), k]."""
        hw = self.height * self.width
        entries = (context.dense is not None) + len(slots)
        row_of_column = []  # value row of every column of the original's list
        if context.dense is not None:
            row_of_column.append((self.capacity + context.dense) * hw + torch.arange(hw, device=slots.device))
        row_of_column += [slot * hw + torch.arange(hw, device=slots.device) for slot in slots]
        row_of_column = torch.cat(row_of_column)
        # Where ATen's CPU topk uses its heap (n >= 64 k), a -inf after the first k never enters
        # the heap and changes nothing: the list can then leave out the windowed entries' keys
        # outside the tile's key rectangle (all -inf), padded with -inf to keep n >= 64 k. The
        # lowest-index rule ("cuda") is kept by any order-preserving shortening.
        shorten = entries * hw >= 64 * k and k <= hw
        similarity, value_rows = [], []
        chunk = max(1, (1 << 22) // (entries * hw))
        for part in queries.split(chunk):
            row_scores, columns = self._original_rows(tile, scores, dense, context, part, k, shorten)
            if shorten and row_scores.shape[1] < 64 * k:
                pad = row_scores.new_full((len(part), 64 * k - row_scores.shape[1]), float("-inf"))
                row_scores = torch.cat([row_scores, pad], 1)
                columns = torch.cat([columns, columns.new_zeros(pad.shape[1])])
            selected = topk_as_original(row_scores, k, self.temperature, self.ties)
            similarity.append(row_scores.gather(1, selected))
            value_rows.append(row_of_column[columns[selected]])
        return torch.cat(similarity), torch.cat(value_rows)

    def _original_rows(
        self,
        tile: Tile,
        scores: torch.Tensor | None,
        dense: _DenseCandidates | None,
        context: ContextList,
        queries: torch.Tensor,
        k: int,
        shorten: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The original's list for the given queries: raw affinities [q, n] (the dense entry, if
        any, in full, then each windowed entry, -inf outside the query's window) and the column
        of the original's list each one is [n]. `shorten`: a windowed entry holds only its key
        rectangle, except the list's first k keys, kept as they are. A frame present as dense
        and windowed gets the dense scores in both (bit-equal copies, as in the original's
        list). The scores are those the candidates were taken from."""
        hw = self.height * self.width
        dense_scores = dense_slot = None
        parts, columns = [], []
        if dense is not None:
            dense_scores = dense.scores[queries]
            dense_slot = self.slot_of.get(self.dense_frames[context.dense])
            parts.append(dense_scores)
            columns.append(torch.arange(hw, device=dense_scores.device))
        mask = tile.mask[:, queries].permute(1, 0, 2).reshape(len(queries), -1)  # [q, R * Cn]
        key_index = tile.key_index.reshape(-1)  # increasing: raster order
        everywhere = torch.arange(hw, device=key_index.device)
        first_k = torch.zeros(hw, dtype=torch.bool, device=key_index.device)
        first_k[:k] = True
        frame_rows: dict[int, torch.Tensor] = {}
        for slot in context.windowed_slots:
            if slot not in frame_rows:
                if slot == dense_slot:
                    inside = dense_scores[:, key_index]
                else:
                    inside = scores[:, queries, :, slot].permute(1, 0, 2).reshape(len(queries), -1)
                frame_rows[slot] = inside + mask
            if not shorten:
                keep = everywhere
            elif columns:
                keep = key_index
            else:  # the list's first entry: its first k keys stay
                in_rect = first_k.clone()
                in_rect[key_index] = True
                keep = in_rect.nonzero().squeeze(1)
            row = frame_rows[slot] if keep is key_index else _scatter(frame_rows[slot], key_index, hw)[:, keep]
            parts.append(row)
            columns.append(keep + len(columns) * hw)
        return torch.cat(parts, 1), torch.cat(columns)


def _scatter(inside: torch.Tensor, key_index: torch.Tensor, hw: int) -> torch.Tensor:
    """[q, R * Cn] scores of a key rectangle -> [q, hw], -inf elsewhere."""
    full = inside.new_full((inside.shape[0], hw), float("-inf"))
    full[:, key_index] = inside
    return full
