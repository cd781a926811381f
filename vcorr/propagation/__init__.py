"""Label propagation through feature affinities: protocols "crw" (HVC, videowalk), "stt"
(Spa-then-Temp) and "dino" (DINO's eval_video_segmentation.py, `vcorr.propagation.dino`).

Entry points:

- `propagate(feats, label0, protocol, late=None, **params)` -> `PropagationResult` with `.soft`
  ``[T, M, h, w]`` and `.ids` ``[T, H, W]`` uint8, for a whole sequence of features;
- `propagate_stream(features, label0, protocol, late=None, **params)` -> one `PropagatedFrame`
  per frame, from any iterable of per-frame features (the pipeline streams frames this way);
- `make_propagator(protocol, label0, **params)` -> the underlying streaming object (`push`).

`propagate` is `propagate_stream` collected: there is one code path. Parameters:
crw: ``cxt_size, radius, topk, temp`` (+ ``num_channels=20``); stt: ``precede, topk, temp,
nrange, with_first_neighbor=True, output_size=None`` (the frame size
when the labels come at the input size, `vcorr.propagation.stt_labels`); dino:
``n_last_frames, size_mask_neighborhood, topk, temp=0.1, stride`` (the encoder's, by which the
soft labels are upsampled) and ``ties`` (no effect: ties are kept); crw and stt: ``tile_size=None`` (query tile
(rows, cols), speed only; None picks one by context size) and
``affinity_dtype="float32"`` (opt-in "float16" / "bfloat16" affinities; not exact) and
``ties="cpu"`` (whose torch.topk choice among exact affinity ties to reproduce, the originals'
on the CPU or "cuda"; `vcorr.propagation.affinity`).
"""

from __future__ import annotations

import importlib

# Exported names -> the module that defines them, imported on first use, so that the workflow's
# DAG can read `vcorr.propagation.parameters` without importing torch.
_EXPORTS = {
    "PROTOCOLS": "vcorr.propagation.stream",
    "PropagationResult": "vcorr.propagation.stream",
    "make_propagator": "vcorr.propagation.stream",
    "propagate": "vcorr.propagation.stream",
    "propagate_stream": "vcorr.propagation.stream",
    "CRWPropagator": "vcorr.propagation.protocols",
    "DINOPropagator": "vcorr.propagation.dino",
    "PropagatedFrame": "vcorr.propagation.protocols",
    "STTPropagator": "vcorr.propagation.protocols",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
