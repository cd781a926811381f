"""Protocol "dino": the label propagation of DINO's `eval_video_segmentation.py`
(../shared/reference/propagation-dino.md), as a streaming propagator.

Per target frame t the context is frame 0 (its hard one-hot labels) followed by the soft labels
of the last `n_last_frames` predicted frames, oldest first (DINO's `queue.Queue`; early frames
simply have fewer). Features are L2-normalised per patch; affinities are `exp(cos / temp)` per
context frame, multiplied by a square window `|di| <= r and |dj| <= r` (r =
`size_mask_neighborhood` patches, inclusive; every context frame, frame 0 included; r = 0: no
window). Per target patch, the entries `>=` the k-th largest **jointly over all context frames**
are kept (ties at the threshold all kept, so possibly more than k: no tie rule is needed, and
`ties` has no effect), the rest set to 0, and the column normalised to sum 1; the target's soft
labels are the weighted sum of the context labels. The soft labels are what the queue stores.

First-frame labels: the annotation's ids resized with PIL nearest straight to the feature grid,
one-hot over `max id + 1` channels (missing ids: empty channels). Frame 0's output is the
annotation itself. Output of frame t: the soft labels bilinearly upsampled by the encoder's
stride (`scale_factor`, align_corners False), each channel min-max normalised over the frame
when its maximum is positive (`norm_mask`), argmax over channels (`torch.max`), then PIL nearest
to frame 0's size.

The arithmetic is DINO's, operation for operation, so that the outputs are bit-identical: the
target features `[hw, dim]` are normalised over their contiguous rows and the context features
as the stacked `[n, dim, hw]` (over a strided axis, as DINO stacks its transposed copies; the
two can differ in the last bit), the affinities come from one `bmm` of the repeated target
against the stack, and the labels from one `mm` over the frame-major key list. What DINO does
not reproduce here: on square frames its label grid is the transpose of its feature grid
(`read_seg` and `read_frame` test orientation differently, quirk 2 of the reference); vcorr uses
the feature grid. DAVIS has no square videos.

Like DINO's, the affinities are dense: about 3 x 4 bytes x (n_last_frames + 1) x (h w)^2 at the
peak, 0.3 GB per frame for a ViT-S/16 on DAVIS (52 x 30 patches), 4 GB for a ViT-S/8 or a
stride-8 CNN (104 x 60).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vcorr.errors import VcorrError
from vcorr.propagation.parameters import TIE_RULES
from vcorr.propagation.protocols import PropagatedFrame, as_label_tensor


def neighbourhood_mask(rows: int, cols: int, radius: int) -> torch.Tensor:
    """`[hw, hw]` float 0/1: key j is within `radius` patches of query i on both axes
    (DINO's `restrict_neighborhood`, inclusive, clipped at the borders)."""
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    y, x = y.flatten(), x.flatten()
    near = ((y[:, None] - y[None, :]).abs() <= radius) & ((x[:, None] - x[None, :]).abs() <= radius)
    return near.to(torch.float32)


def norm_mask(maps: torch.Tensor) -> torch.Tensor:
    """DINO's `norm_mask` on `[C, H, W]`, in place: every channel whose maximum is positive is
    shifted to minimum 0 and divided by its new maximum."""
    for channel in maps:
        if channel.max() > 0:
            shifted = channel - channel.min()
            channel.copy_(shifted / shifted.max())
    return maps


class DINOPropagator:
    """Protocol "dino" (module docstring). `stride`: the encoder's (the upsampling factor)."""

    def __init__(
        self,
        label0,
        *,
        n_last_frames: int,
        size_mask_neighborhood: int,
        topk: int,
        temp: float = 0.1,
        stride: int,
        ties: str = "cpu",
    ) -> None:
        if ties not in TIE_RULES:
            raise VcorrError(f"ties must be one of {list(TIE_RULES)} (vcorr.propagation.parameters), got {ties!r}")
        self.label0 = label0
        self.n_last_frames = int(n_last_frames)
        self.radius = int(size_mask_neighborhood)
        self.topk = int(topk)
        self.temp = float(temp)
        self.stride = int(stride)
        if self.n_last_frames < 1 or self.topk < 1 or self.radius < 0 or self.stride < 1:
            raise VcorrError("protocol dino: n_last_frames, topk and stride must be positive, size_mask_neighborhood >= 0")
        self.t = 0
        self.grid: tuple[int, int] | None = None
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None  # frame 0's (features, labels)
        self.queue: list[tuple[torch.Tensor, torch.Tensor]] = []  # the last predicted frames
        self.mask: torch.Tensor | None = None

    def push(self, features: torch.Tensor, new_objects=None) -> PropagatedFrame:
        """Propagate to the next frame given its features `[K, h, w]` (raw)."""
        if new_objects is not None:
            raise VcorrError("objects that appear later are defined for protocol crw only")
        features = torch.as_tensor(features)
        if features.ndim != 3:
            raise VcorrError(f"features must be [K, h, w] per frame, got {tuple(features.shape)}")
        dim, rows, cols = features.shape
        # DINO's extract_feature: patches row-major, [hw, dim] contiguous.
        patches = features.to(torch.float32).reshape(dim, rows * cols).t().contiguous()
        if self.grid is None:
            self.grid = (rows, cols)
            output = self._start(patches)
        elif (rows, cols) != self.grid:
            raise VcorrError(f"frame {self.t}: feature grid {(rows, cols)} differs from the first frame's {self.grid}")
        else:
            output = self._step(patches)
        self.t += 1
        return output

    def _start(self, patches: torch.Tensor) -> PropagatedFrame:
        ids = as_label_tensor(self.label0, patches.device)
        if ids.ndim != 2:
            raise VcorrError("protocol dino: the initial labels must be an [H, W] id map")
        if int(ids.max()) > 255:
            raise VcorrError("initial labels: ids above 255")
        self.out_size = tuple(ids.shape)
        rows, cols = self.grid
        small = Image.fromarray(ids.to("cpu", torch.uint8).numpy()).resize((cols, rows), Image.NEAREST)
        small_ids = torch.from_numpy(np.asarray(small).astype(np.int64)).to(patches.device)
        labels = F.one_hot(small_ids, int(small_ids.max()) + 1).permute(2, 0, 1).to(torch.float32)
        self.first = (patches, labels)
        first_ids = ids.to(torch.uint8)
        return PropagatedFrame(labels, lambda _: first_ids)

    def _step(self, patches: torch.Tensor) -> PropagatedFrame:
        context = [self.first, *self.queue]
        count = len(context)
        rows, cols = self.grid
        target = F.normalize(patches, dim=1, p=2)
        sources = F.normalize(torch.stack([features.t() for features, _ in context]), dim=1, p=2)
        affinity = torch.exp(torch.bmm(target.unsqueeze(0).repeat(count, 1, 1), sources) / self.temp)
        if self.radius > 0:
            if self.mask is None:
                self.mask = neighbourhood_mask(rows, cols, self.radius).to(affinity.device)[None]
            affinity *= self.mask
        affinity = affinity.transpose(2, 1).reshape(-1, rows * cols)  # [count * hw keys, hw queries]
        threshold = torch.topk(affinity, dim=0, k=self.topk).values.min(dim=0).values
        affinity[affinity < threshold] = 0
        affinity = affinity / torch.sum(affinity, keepdim=True, dim=0)
        labels = torch.stack([labels for _, labels in context])  # [count, C, h, w]
        channels = labels.shape[1]
        keys = labels.reshape(count, channels, -1).transpose(2, 1).reshape(-1, channels).T
        soft = torch.mm(keys, affinity).reshape(channels, rows, cols)
        if len(self.queue) == self.n_last_frames:
            self.queue.pop(0)
        self.queue.append((patches, soft))
        return PropagatedFrame(soft, self._readout)

    def _readout(self, soft: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(soft[None], scale_factor=self.stride, mode="bilinear", align_corners=False,
                           recompute_scale_factor=False)[0]
        ids = torch.max(norm_mask(up), dim=0).indices.to("cpu", torch.uint8).numpy()
        height, width = self.out_size
        resized = np.asarray(Image.fromarray(ids).resize((width, height), Image.NEAREST))
        return torch.from_numpy(resized.copy()).to(soft.device)
