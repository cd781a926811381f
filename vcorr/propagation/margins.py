"""Opt-in margin diagnostics of label propagation: how close each decision of a run was.

A `MarginRecorder` attached to a propagator (`propagate_stream(..., observer=recorder)`) records,
for every frame, its soft labels and, for every query position of every frame after the first,
what its top-k decided and by how much:

- the keys it selected (frame and position) and their softmax weights, so that a change of a
  key's labels can be followed to the queries that read it;
- the candidates ranked beyond the cut, with their affinities (raw cosine similarity, before
  the temperature): where the k-th selected and the best unselected key of another position are
  within float rounding of each other, another implementation (or CPU) may keep the other one.

`vcorr.propagation.fidelity` turns these into the margin of every output decision (arg-max of
the labels, top-5 read-out of a heat map) and classifies differences against another run.

Recording costs one more, longer, top-k ranking per frame from the same affinities (no second
GEMM); without a recorder the propagators do nothing of this (one `is None` test per frame).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

__all__ = ["ChainSelection", "MarginRecorder"]


@dataclass
class ChainSelection:
    """One reference chain's top-k at one frame (crw has one chain per annotated frame, stt one).

    Keys are named by (frame, flat position y * w + x) on the feature grid. `ranked_*` is the
    query's candidate list ranked beyond the cut (the top k + E, E covering the most copies one
    key has in the context list plus k more), which tells how close the best unselected keys came."""

    frames: torch.Tensor  # [hw, k] int32: frame of each selected key
    positions: torch.Tensor  # [hw, k] int32
    weights: torch.Tensor  # [hw, k] float32 softmax weights (0 for padding)
    similarity: torch.Tensor  # [hw, k] float32 raw affinities (cosine, before the temperature)
    ranked_similarity: torch.Tensor  # [hw, k + E] descending, -inf padding
    ranked_frames: torch.Tensor  # [hw, k + E] int32
    ranked_positions: torch.Tensor  # [hw, k + E] int32


class MarginRecorder:
    """Collects one sequence's soft labels and per-frame selections (module doc).

    After the run: `protocol` ("crw" / "stt"), `out_size` (the read-out size), `min_max` (stt id
    maps: channels min-max normalised before the arg-max), `label0` (the labels the propagator
    was given), `soft` (every frame's ``[M, h, w]`` soft labels), `selections` ({frame: [one
    `ChainSelection` per chain]}, frames >= 1)."""

    def __init__(self) -> None:
        self.protocol: str | None = None
        self.out_size: tuple[int, int] | None = None
        self.min_max = False
        self.label0 = None
        self.soft: list[torch.Tensor] = []
        self.selections: dict[int, list[ChainSelection]] = {}

    def pushed(self, propagator, frame) -> None:
        if propagator.t == 0:
            from vcorr.propagation.protocols import STTPropagator

            self.protocol = "stt" if isinstance(propagator, STTPropagator) else "crw"
            self.out_size = tuple(propagator.out_size)
            self.min_max = bool(getattr(propagator, "index_labels", False))
            self.label0 = propagator.label0
        self.soft.append(frame.soft.detach().cpu())

    @staticmethod
    def ranked_size(k: int, contexts) -> int:
        """How far past the cut to rank: k more than the most copies one key has in a list."""
        copies = max(max(Counter(c.windowed_slots).values(), default=0) + (c.dense is not None) for c in contexts)
        return 2 * k + copies

    def selected(self, propagator, tops, ranked) -> None:
        memory = propagator.memory
        hw = memory.height * memory.width
        frame_of_row = _frame_of_row(memory)
        chains = []
        for top, more in zip(tops, ranked):
            rows, more_rows = top.value_rows.cpu(), more.value_rows.cpu()
            similarity = top.similarity.cpu()
            chains.append(
                ChainSelection(
                    frames=frame_of_row[rows // hw].to(torch.int32),
                    positions=(rows % hw).to(torch.int32),
                    weights=torch.softmax(similarity / propagator.temp, dim=1),
                    similarity=similarity,
                    ranked_similarity=more.similarity.cpu(),
                    ranked_frames=frame_of_row[more_rows // hw].to(torch.int32),
                    ranked_positions=(more_rows % hw).to(torch.int32),
                )
            )
        self.selections[propagator.t] = chains


def _frame_of_row(memory) -> torch.Tensor:
    """Frame index of each block of `ContextMemory.values` rows (slots, then dense frames); -1
    for an empty slot (only padding points there)."""
    frames = torch.full((memory.capacity + len(memory.dense_frames),), -1, dtype=torch.long)
    for frame, slot in memory.slot_of.items():
        frames[slot] = frame
    for index, frame in enumerate(memory.dense_frames):
        frames[memory.capacity + index] = frame
    return frames
