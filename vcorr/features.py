"""Frames -> normalised network input (`vcorr.models.preprocess`) -> features, for one encoder or
HVC's fused pair; the encoders are ResNets or Vision Transformers (`vcorr.models.vit`: patch
features `[dim, H // p, W // p]`).

The extractor takes a method's validated `vcorr.models.config.FeatureConfig` (its encoders,
fusion and input); each encoder's checkpoint path comes from `WeightsSource.resolve`, and
`weights: null` means a random initialisation drawn with `seed` (so a "random" baseline is the
same network on every run and machine).

Features of a frame whose size is not a multiple of the stride follow the convolution arithmetic
of the originals (each stride-2 layer gives floor((n - 1) / 2) + 1): 480x854 -> 60x107 at stride 8.
Single-encoder features are returned as the encoder computes them (the propagation protocols
L2-normalise them); a fusion (HVC's, SFC's) returns
`normalize(concat(w * normalize(f_0), normalize(f_1)))` with its weight w
(`vcorr.models.config.FUSION_WEIGHTS`: 1.05 for HVC, 1.75 for SFC), every normalisation over channels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vcorr.device import resolve_device
from vcorr.errors import VcorrError
from vcorr.models.config import FUSION_WEIGHTS, FeatureConfig
from vcorr.models.preprocess import normalise_frames

HVC_FUSION_WEIGHT = FUSION_WEIGHTS["hvc"]


def fuse_hvc(hvc: torch.Tensor, moco: torch.Tensor, weight: float = HVC_FUSION_WEIGHT) -> torch.Tensor:
    """HVC's (and SFC's) test-time fusion of `[N, C, h, w]` maps: normalize(cat(w * n(hvc), n(moco)))."""
    if hvc.shape[-2:] != moco.shape[-2:]:
        raise VcorrError(
            f"feature fusion needs feature maps of equal size, got {tuple(hvc.shape[-2:])} and "
            f"{tuple(moco.shape[-2:])}"
        )
    fused = torch.cat((weight * F.normalize(hvc, dim=1), F.normalize(moco, dim=1)), dim=1)
    return F.normalize(fused, dim=1)


class FeatureExtractor:
    """Builds the method's encoder(s) once, then turns uint8 RGB frames into feature maps.

    `extract(frame)` -> float32 `[K, h, w]` and `extract_batch(frames)` -> `[N, K, h, w]`, both on
    `self.device`. `amp=True` runs the encoders under float16 autocast on CUDA (as HVC's
    `infer_vos.py` does); it has no effect on CPU, where `self.amp` is False.
    `zero_image_bn_update=True` applies HVC's post-load BatchNorm step to every encoder after its
    weights are loaded (`vcorr.models.hvc_bn`).
    """

    def __init__(
        self,
        features: FeatureConfig,
        weights_root: str | Path | None = None,
        device: str | torch.device = "auto",
        amp: bool = False,
        fusion_weight: float | None = None,
        zero_image_bn_update: bool = False,
    ) -> None:
        from vcorr.models import build_encoder
        from vcorr.models.weights import load_weights

        self.device = resolve_device(device)
        self.input = features.input
        self.fusion = features.fusion
        # The fusion's own weight unless the caller sets one.
        self.fusion_weight = FUSION_WEIGHTS.get(self.fusion) if fusion_weight is None else fusion_weight
        self.amp = bool(amp) and self.device.type == "cuda"
        self.networks = []
        self.reports = []
        for encoder in features.encoders:
            # A private RNG stream: a seeded random init never depends on, or disturbs, the caller's.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(encoder.seed or 0)
                network = build_encoder(encoder.arch)
            if encoder.weights:
                path = encoder.weights.resolve(weights_root)
                self.reports.append(load_weights(network, path, encoder.weights.format))
            if zero_image_bn_update:
                # HVC's make_encoder -> infer_dims, after loading, on the CPU (vcorr.models.hvc_bn).
                from vcorr.models.hvc_bn import zero_image_bn_update as update_bn

                update_bn(network)
            self.networks.append(network.eval().to(self.device))
        strides = {network.stride for network in self.networks}
        if len(strides) != 1:
            raise VcorrError(f"fused encoders must share one stride, got {sorted(strides)}")
        self.stride: int = strides.pop()
        self.channels: int = sum(network.out_channels for network in self.networks)
        # Input sides every encoder's grid covers exactly (a ViT's patch; 1 for convolutions).
        self.input_multiple: int = math.lcm(*(network.input_multiple for network in self.networks))

    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def extract_batch(self, frames: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 RGB frames `[N, H, W, 3]` (equal sizes) -> float32 features `[N, K, h, w]`."""
        if not isinstance(frames, np.ndarray):
            frames = np.stack([np.asarray(frame) for frame in frames])
        images = normalise_frames(frames, self.input).to(self.device)
        with torch.inference_mode(), self._autocast():
            maps = [network(images) for network in self.networks]
        maps = [feature_map.float() for feature_map in maps]
        if self.fusion is not None:
            return fuse_hvc(maps[0], maps[1], self.fusion_weight)
        return maps[0]

    def extract(self, frame: np.ndarray) -> torch.Tensor:
        """One uint8 RGB frame `[H, W, 3]` -> float32 features `[K, h, w]`."""
        frame = np.asarray(frame)
        if frame.ndim != 3:
            raise VcorrError(f"a frame must be a uint8 HxWx3 RGB array, got shape {tuple(frame.shape)}")
        return self.extract_batch(frame[None])[0]
