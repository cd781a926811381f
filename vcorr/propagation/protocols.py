"""The two published label propagation protocols as streaming propagators.

A propagator is built from the first frame's labels and the protocol's parameters, then fed one
frame's features at a time (`push`); it keeps only the context memory the protocol needs and
returns each frame's soft labels (feature resolution) and output map (label resolution).
The definitions follow the original code of each protocol:

- `CRWPropagator` — protocol "crw" (HVC `infer_vos.py` + `labelprop/`, videowalk);
- `STTPropagator` — protocol "stt" (Spa-then-Temp `VanillaTracker.forward_test`).

Both take ``ties`` (`vcorr.propagation.parameters.TIE_RULES`): whose `torch.topk` choice among exact
affinity ties to reproduce, ``"cpu"`` (default; the originals run on the CPU, as the reference
outputs in ../shared/testdata were made) or ``"cuda"`` (the originals on a GPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vcorr.errors import VcorrError
from vcorr.propagation.affinity import ContextList, ContextMemory, TopK
from vcorr.propagation.parameters import TIE_RULES
from vcorr.propagation.stt_labels import first_frame_output
from vcorr.propagation.window import Window



def default_tile(capacity: int) -> tuple[int, int]:
    """Query tile (rows, cols): wide tiles when few frames are kept (the per-tile selection work
    dominates), narrower ones for long contexts (the GEMM over the windows' union dominates and
    grows with the tile). Measured at DAVIS size on 2 cores; results do not depend on it."""
    return (12, 16) if capacity <= 8 else (12, 8)

AFFINITY_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PropagatedFrame:
    """One frame's soft labels `[M, h, w]` at feature resolution; its `[H, W]` uint8 output map
    is read out on first access only, since keypoint tasks and unwritten frames never need it."""

    def __init__(self, soft: torch.Tensor, read_ids: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.soft = soft
        self._read_ids = read_ids

    @functools.cached_property
    def ids(self) -> torch.Tensor:
        return self._read_ids(self.soft)


def as_label_tensor(labels, device: torch.device) -> torch.Tensor:
    """An `[H, W]` integer id map (int64) or `[M, H, W]` soft labels (float32) as a tensor."""
    tensor = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if tensor.ndim == 2:
        if tensor.is_floating_point():
            raise VcorrError("initial labels: a [H, W] map must hold integer ids")
        if int(tensor.min()) < 0:
            raise VcorrError("initial labels: negative ids")
        return tensor.to(device=device, dtype=torch.long)
    if tensor.ndim == 3:
        return tensor.to(device=device, dtype=torch.float32)
    raise VcorrError(f"initial labels must be [H, W] ids or [M, H, W] soft labels, got {tuple(tensor.shape)}")


def one_hot(ids: torch.Tensor, channels: int) -> torch.Tensor:
    """[H, W] ids -> [channels, H, W] float one-hot."""
    if int(ids.max()) >= channels:
        raise VcorrError(f"label id {int(ids.max())} does not fit in {channels} channels")
    return F.one_hot(ids, channels).permute(2, 0, 1).to(torch.float32)


def _resize(labels: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    return F.interpolate(labels[None], size, mode="bilinear", align_corners=align_corners)[0]


def read_out(soft: torch.Tensor, size: tuple[int, int], align_corners: bool, min_max: bool) -> torch.Tensor:
    """Output map: upsample the soft labels [M, h, w] to `size`, optionally min-max normalise each
    channel over the frame (Spa-then-Temp; only channels whose max > 0), argmax over channels
    (the first channel wins ties, as torch.argmax does).

    Labels are non-negative (weighted sums of one-hot or heat-map labels), so channels that are
    zero everywhere can only win where every channel is 0, and there the answer is channel 0:
    only the non-empty channels are upsampled and compared."""
    if bool((soft < 0).any()):
        active = torch.arange(soft.shape[0], device=soft.device)
    else:
        active = (soft.flatten(1).amax(1) > 0).nonzero().squeeze(1)
    ids = torch.zeros(size, dtype=torch.uint8, device=soft.device)
    if len(active) == 0:
        return ids
    up = _resize(soft[active], size, align_corners=align_corners)
    if min_max:
        flat = up.flatten(1)
        low = flat.min(1).values[:, None, None]
        high = flat.max(1).values[:, None, None]
        up = torch.where(high > 0, (up - low) / (high - low + 1e-12), up)
    best, best_index = up[0].clone(), torch.zeros(size, dtype=torch.long, device=soft.device)
    for index in range(1, len(active)):
        better = up[index] > best
        best = torch.where(better, up[index], best)
        best_index.masked_fill_(better, index)
    ids = active[best_index].to(torch.uint8)
    if len(active) < soft.shape[0]:
        ids.masked_fill_(best <= 0, 0)
    return ids


def _normalise(features: torch.Tensor) -> torch.Tensor:
    if features.ndim != 3:
        raise VcorrError(f"features must be [K, h, w] per frame, got {tuple(features.shape)}")
    return F.normalize(features.to(torch.float32), p=2, dim=0)


def _predict(memory: ContextMemory, top: TopK, temp: float, shape: tuple[int, int]) -> torch.Tensor:
    """Softmax over the k selected affinities (divided by the temperature, as the originals do)
    and the weighted sum of the selected keys' labels -> [M, h, w]."""
    weights = torch.softmax(top.similarity / temp, dim=1)
    table = memory.values.view(-1, memory.values.shape[-1])
    labels = table[top.value_rows]  # [hw, k, M]
    return (labels * weights[..., None]).sum(1).t().reshape(-1, *shape)


class _Propagator:
    """Shared streaming bookkeeping: frame counter, memory creation, feature checks."""

    window: Window
    capacity: int

    def __init__(self, label0, topk: int, temp: float, tile_size, affinity_dtype: str, ties: str) -> None:
        self.label0 = label0
        self.topk = int(topk)
        self.temp = float(temp)
        self.tile_size = tuple(tile_size) if tile_size is not None else None
        if affinity_dtype not in AFFINITY_DTYPES:
            raise VcorrError(f"affinity_dtype must be one of {sorted(AFFINITY_DTYPES)}")
        self.affinity_dtype = AFFINITY_DTYPES[affinity_dtype]
        if ties not in TIE_RULES:
            raise VcorrError(f"ties must be one of {list(TIE_RULES)} (vcorr.propagation.parameters), got {ties!r}")
        self.ties = ties
        # Opt-in diagnostics (vcorr.propagation.margins.MarginRecorder); None costs nothing.
        self.observer = None
        self.t = 0
        self.memory: ContextMemory | None = None
        self.feature_shape: tuple[int, ...] | None = None

    def push(self, features: torch.Tensor, new_objects=None) -> PropagatedFrame:
        """Propagate to the next frame given its features [K, h, w] (raw; normalised here).

        `new_objects`: an [H, W] id map of objects first annotated at this frame (crw only)."""
        features = _normalise(torch.as_tensor(features))
        if self.feature_shape is None:
            self.feature_shape = tuple(features.shape)
            labels = as_label_tensor(self.label0, features.device)
            output = self._start(features, labels)
        else:
            if tuple(features.shape) != self.feature_shape:
                raise VcorrError(
                    f"frame {self.t}: features {tuple(features.shape)} differ from the first "
                    f"frame's {self.feature_shape}"
                )
            output = self._step(features, new_objects)
        if self.observer is not None:
            self.observer.pushed(self, output)
        self.t += 1
        return output

    def _select(self, features: torch.Tensor, contexts: list[ContextList]) -> list[TopK]:
        if self.observer is None:
            return self.memory.select(features, contexts, self.topk)
        ranked_size = self.observer.ranked_size(self.topk, contexts)
        tops, ranked = self.memory.select(features, contexts, self.topk, ranked=ranked_size)
        self.observer.selected(self, tops, ranked)
        return tops

    def _new_memory(self, features: torch.Tensor, channels: int) -> ContextMemory:
        dim, height, width = features.shape
        return ContextMemory(
            height, width, dim, channels, self.capacity, self.window,
            self.tile_size or default_tile(self.capacity),
            features.device, self.affinity_dtype, self.temp, self.ties,
        )

    def _start(self, features: torch.Tensor, labels: torch.Tensor) -> PropagatedFrame:
        raise NotImplementedError

    def _step(self, features: torch.Tensor, new_objects) -> PropagatedFrame:
        raise NotImplementedError


class CRWPropagator(_Propagator):
    """Protocol "crw": context ``[t0] + [max(s, t0) for s in range(t - C, t)]`` per reference
    chain t0, circle radius on all entries but the first, labels kept soft, objects that appear
    later start their own chain (HVC `step_seg`)."""

    def __init__(
        self,
        label0,
        *,
        cxt_size: int,
        radius: float,
        topk: int,
        temp: float,
        num_channels: int = 20,
        tile_size=None,
        affinity_dtype: str = "float32",
        ties: str = "cpu",
    ) -> None:
        super().__init__(label0, topk, temp, tile_size, affinity_dtype, ties)
        self.cxt_size = int(cxt_size)
        self.window = Window.circle(radius)
        self.capacity = self.cxt_size
        self.num_channels = int(num_channels)
        self.chains: list[tuple[int, int, torch.Tensor]] = []  # (t0, dense index, valid [M,1,1])

    def _labels_at_full_size(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 2:
            return one_hot(labels, max(self.num_channels, 1))
        return labels

    def _readout(self, soft: torch.Tensor) -> torch.Tensor:
        return read_out(soft, self.out_size, align_corners=True, min_max=False)

    def _start(self, features, labels):
        full = self._labels_at_full_size(labels)
        self.out_size = tuple(full.shape[-2:])
        soft = _resize(full, features.shape[-2:], align_corners=True)
        self.memory = self._new_memory(features, soft.shape[0])
        dense = self.memory.add_dense(0, features, soft)
        self.chains.append((0, dense, self._valid(soft)))
        self.memory.store(0, features, soft)
        return PropagatedFrame(soft, self._readout)

    @staticmethod
    def _valid(labels: torch.Tensor) -> torch.Tensor:
        """[M, 1, 1] 0/1: the channels present in a chain's initial labels."""
        return (labels.flatten(1).sum(-1) > 0).to(torch.float32)[:, None, None]

    def _step(self, features, new_objects):
        t, memory = self.t, self.memory
        contexts = [
            ContextList(
                dense=dense,
                windowed_slots=[memory.slot_of[max(s, t0)] for s in range(t - self.cxt_size, t)],
            )
            for t0, dense, _ in self.chains
        ]
        tops = self._select(features, contexts)
        shape = tuple(features.shape[-2:])
        merged = sum(
            valid * _predict(memory, top, self.temp, shape)
            for (_, _, valid), top in zip(self.chains, tops)
        )
        if new_objects is not None:
            merged = self._add_objects(features, merged, new_objects)
        memory.keep_only(set(range(t + 1 - self.cxt_size, t + 1)))
        memory.store(t, features, merged)
        return PropagatedFrame(merged, self._readout)

    def _add_objects(self, features, merged, new_objects) -> torch.Tensor:
        """HVC: ground truth of objects first annotated now overrides the prediction where it is
        (only their channels: background is not re-annotated) and starts a new chain."""
        ids = as_label_tensor(new_objects, features.device)
        if ids.ndim != 2 or tuple(ids.shape) != self.out_size:
            raise VcorrError(
                f"frame {self.t}: new-object map {tuple(ids.shape)} differs from the first "
                f"frame's labels {self.out_size}"
            )
        init = self._labels_at_full_size(ids)
        init[0] = 0  # id 0 is "no new object" here
        down = _resize(init, features.shape[-2:], align_corners=True)
        weight = down.sum(0, keepdim=True)
        merged = (1 - weight) * merged + weight * down
        dense = self.memory.add_dense(self.t, features, merged)
        self.chains.append((self.t, dense, self._valid(init)))
        return merged


class STTPropagator(_Propagator):
    """Protocol "stt": keys = frame 0 then frames ``max(0, t-P) .. t-1``, square window
    ``|d| <= R // 2`` on every entry (frame 0 unrestricted without with_first_neighbor)."""

    def __init__(
        self,
        label0,
        *,
        precede: int,
        topk: int,
        temp: float,
        nrange: int,
        with_first_neighbor: bool = True,
        output_size: tuple[int, int] | None = None,
        tile_size=None,
        affinity_dtype: str = "float32",
        ties: str = "cpu",
    ) -> None:
        super().__init__(label0, topk, temp, tile_size, affinity_dtype, ties)
        # The original frame size when `label0` is given at the network's input size
        # (vcorr.propagation.stt_labels); None = the labels' own size.
        self.output_size = tuple(output_size) if output_size is not None else None
        self.precede = int(precede)
        self.window = Window.square(nrange)
        self.first_dense = not bool(with_first_neighbor)
        self.capacity = self.precede + 1  # frame 0 stays, plus the last P frames

    def _start(self, features, labels):
        height, width = features.shape[-2:]
        self.index_labels = labels.ndim == 2
        if self.index_labels:
            # Spa-then-Temp resizes the id map with PIL nearest, then one-hot over max + 1 ids.
            ids = labels.to("cpu", torch.uint8).numpy()
            if int(labels.max()) > 255:
                raise VcorrError("initial labels: ids above 255")
            small = Image.fromarray(ids).resize((width, height), Image.NEAREST)
            small_ids = torch.from_numpy(np.asarray(small).astype(np.int64)).to(features.device)
            soft = one_hot(small_ids, int(small_ids.max()) + 1)
        else:
            soft = _resize(labels, (height, width), align_corners=False)
        self.out_size = self.output_size or tuple(labels.shape[-2:])
        # forward_test writes frame 0 as the given labels resized to the original frame size.
        first = first_frame_output(labels, self.out_size)
        first_ids = first if self.index_labels else first.argmax(0).to(torch.uint8)
        self.memory = self._new_memory(features, soft.shape[0])
        if self.first_dense:
            self.memory.add_dense(0, features, soft)
        self.memory.store(0, features, soft)
        return PropagatedFrame(soft, lambda _: first_ids)

    def _readout(self, soft: torch.Tensor) -> torch.Tensor:
        return read_out(soft, self.out_size, align_corners=False, min_max=self.index_labels)

    def _step(self, features, new_objects):
        if new_objects is not None:
            raise VcorrError("objects that appear later are defined for protocol crw only")
        t, memory = self.t, self.memory
        frames = list(range(max(0, t - self.precede), t))
        if not self.first_dense:
            frames = [0] + frames
        context = ContextList(
            dense=0 if self.first_dense else None,
            windowed_slots=[memory.slot_of[f] for f in frames],
        )
        (top,) = self._select(features, [context])
        soft = _predict(memory, top, self.temp, tuple(features.shape[-2:]))
        memory.keep_only({0} | set(range(t + 1 - self.precede, t + 1)))
        memory.store(t, features, soft)
        return PropagatedFrame(soft, self._readout)
