"""Top-k affinities of a query frame against a context memory, without dense affinity matrices.

The context of a query frame is an ordered list of entries, as in the original code's
concatenated key list: at most one *dense* entry first (a reference frame every query attends to
in full, crw's long-term frame or Spa-then-Temp's frame 0 without its window) followed by
*windowed* entries (each query attends only to the keys inside its spatial window). The same frame
may occur several times in the list (crw repeats the reference frame while ``t <= C``;
Spa-then-Temp lists frame 0 twice while ``t <= P``); it is scored once and its candidates are
counted with their multiplicity, so a key present m times occupies m of the k slots exactly as it
does in the original list.

Selection rule (also for exact ties, so results are deterministic and device independent): the k
candidates with the largest affinity; among equal affinities the dense entry's keys come first
(in raster order), then the windowed keys in raster order of their position, and at one position
the earlier context entry. `ordered_topk` implements the rule on a candidate list; the pruning
below keeps it.

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

from vcorr.propagation.window import Tile, Window, make_tiles


def ordered_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of `values` [N, L] by (value descending, column ascending).

    Returns values and column indices [N, k], in that order. `torch.topk` leaves the choice among
    equal values open; rows whose k-th value is tied with an unselected column are resolved by a
    stable sort, and the selected k are put in rule order.
    """
    top_values, top_index = torch.topk(values, k, dim=1, largest=True, sorted=True)
    boundary_tied = (values >= top_values[:, k - 1 : k]).sum(dim=1) > k
    if bool(boundary_tied.any()):
        rows = boundary_tied.nonzero().squeeze(1)
        sorted_values, sorted_index = torch.sort(values[rows], dim=1, descending=True, stable=True)
        top_values[rows] = sorted_values[:, :k]
        top_index[rows] = sorted_index[:, :k]
    top_index, by_index = top_index.sort(dim=1)
    top_values = top_values.gather(1, by_index)
    top_values, by_value = top_values.sort(dim=1, descending=True, stable=True)
    return top_values, top_index.gather(1, by_value)


def _require_layout(tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    """Flat indexing (`view(-1)[...]`) is only right on a contiguous tensor of this shape."""
    if tuple(tensor.shape) != tuple(shape) or not tensor.is_contiguous():
        raise RuntimeError(
            f"{what}: expected a contiguous tensor of shape {tuple(shape)}, got {tuple(tensor.shape)} "
            f"(contiguous: {tensor.is_contiguous()}); the flat indexing would read the wrong entries"
        )


def _pad_candidates(
    values: torch.Tensor, rows: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fewer than k candidates (tiny frames): pad with -inf, which get weight 0 like the original's
    masked (-inf / -1e10) entries."""
    missing = k - values.shape[1]
    if missing <= 0:
        return values, rows
    pad_values = values.new_full((values.shape[0], missing), float("-inf"))
    pad_rows = rows.new_zeros((rows.shape[0], missing))
    return torch.cat([values, pad_values], 1), torch.cat([rows, pad_rows], 1)


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
    slot s at row s, dense reference d at row ``capacity + d``.
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
    ) -> None:
        self.height, self.width, self.capacity = height, width, capacity
        self.affinity_dtype = affinity_dtype
        self.keys = torch.zeros(height, width, capacity, dim, device=device, dtype=affinity_dtype)
        self.values = torch.zeros(capacity, height * width, channels, device=device)
        self.dense_keys: list[torch.Tensor] = []
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

    def add_dense(self, features: torch.Tensor, labels: torch.Tensor) -> int:
        """Keep a reference frame every query attends to in full; returns its dense index."""
        self.dense_keys.append(features.flatten(1).t().contiguous().to(self.affinity_dtype))
        self.values = torch.cat([self.values, labels.flatten(1).t()[None]], 0)
        return len(self.dense_keys) - 1

    def select(self, query: torch.Tensor, contexts: list[ContextList], k: int) -> list[TopK]:
        """The top-k context keys of every position of `query` [K, h, w] (normalised), per context."""
        hw = self.height * self.width
        query_hwk = query.permute(1, 2, 0).to(self.affinity_dtype)
        results = [
            TopK(
                similarity=query.new_empty((hw, k), dtype=torch.float32),
                value_rows=torch.empty((hw, k), dtype=torch.long, device=query.device),
            )
            for _ in contexts
        ]
        slot_lists = [
            torch.tensor(c.windowed_slots, dtype=torch.long, device=query.device) for c in contexts
        ]
        needs_windowed = any(c.windowed_slots for c in contexts)
        for tile in self.tiles:
            tile_query = query_hwk[tile.rows, tile.cols].reshape(-1, query_hwk.shape[-1])
            windowed = self._windowed_scores(tile, tile_query) if needs_windowed else None
            dense_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            group_cache: dict[tuple[int, ...], torch.Tensor] = {}
            for context, slots, result in zip(contexts, slot_lists, results):
                parts_values, parts_rows = [], []
                if context.dense is not None:
                    if context.dense not in dense_cache:
                        dense_cache[context.dense] = self._dense_candidates(
                            tile_query, context.dense, k
                        )
                    parts_values.append(dense_cache[context.dense][0])
                    parts_rows.append(dense_cache[context.dense][1])
                if len(slots):
                    distinct = tuple(sorted(set(context.windowed_slots)))
                    if distinct not in group_cache:
                        group_cache[distinct] = self._position_maxima(tile, windowed, distinct)
                    values, rows = self._windowed_candidates(
                        tile, windowed, group_cache[distinct], slots, k
                    )
                    parts_values.append(values)
                    parts_rows.append(rows)
                values, rows = _pad_candidates(
                    torch.cat(parts_values, 1), torch.cat(parts_rows, 1), k
                )
                top_values, top_index = ordered_topk(values, k)
                result.similarity[tile.query_index] = top_values
                result.value_rows[tile.query_index] = rows.gather(1, top_index)
        return results

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates of the windowed entries `slots` (in context order, repeats included):
        every entry at the k best key positions of each query, ordered by (position, entry)."""
        n_rows, n_queries, n_cols, n_slots = scores.shape
        # The flat indices below address these exact layouts (built by _windowed_scores and make_tiles).
        _require_layout(scores, scores.shape, "windowed scores [R, Q, Cn, slot]")
        _require_layout(tile.mask, (n_rows, n_queries, n_cols), "tile mask [R, Q, Cn]")
        _require_layout(tile.key_index, (n_rows, n_cols), "tile key index [R, Cn]")
        _, best = ordered_topk(position_maxima, min(k, position_maxima.shape[1]))
        best, _ = best.sort(dim=1)  # back to raster order
        key_row, key_col = best // n_cols, best % n_cols
        query = torch.arange(n_queries, device=scores.device)[:, None]
        start = ((key_row * n_queries + query) * n_cols + key_col) * n_slots  # [Q, g]
        values = scores.view(-1)[start[..., None] + slots]  # [Q, g, E]
        # the window mask again: a selected position may be outside (fewer than k inside)
        values = values + tile.mask.view(n_rows, n_queries, n_cols)[key_row, query, key_col][..., None]
        positions = tile.key_index.view(-1)[best]  # [Q, g]
        rows = slots * (self.height * self.width) + positions[..., None]
        return values.reshape(n_queries, -1), rows.reshape(n_queries, -1)

    def _dense_candidates(
        self, tile_query: torch.Tensor, dense: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best keys of a dense reference frame for each of the tile's queries, by the same
        two stages (groups = key rows of the frame)."""
        n_queries = tile_query.shape[0]
        scores = (tile_query @ self.dense_keys[dense].t()).to(torch.float32)  # [Q, hw]
        row_max = scores.view(n_queries, self.height, self.width).amax(dim=2)
        _, best_rows = ordered_topk(row_max, min(k, self.height))
        best_rows, _ = best_rows.sort(dim=1)
        columns = torch.arange(self.width, device=scores.device)
        positions = (best_rows[..., None] * self.width + columns).reshape(n_queries, -1)
        values = scores.gather(1, positions)  # [Q, g * w]
        top_values, top_index = ordered_topk(values, min(k, values.shape[1]))
        rows = (self.capacity + dense) * (self.height * self.width) + positions.gather(1, top_index)
        return top_values, rows
