"""The entry points of label propagation (exported by `vcorr.propagation`, whose docstring
describes them): a whole sequence, a stream of frames, or the underlying propagator."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch

from vcorr.errors import VcorrError
from vcorr.propagation.dino import DINOPropagator
from vcorr.propagation.protocols import CRWPropagator, PropagatedFrame, STTPropagator

PROTOCOLS = {"crw": CRWPropagator, "stt": STTPropagator, "dino": DINOPropagator}
Propagator = CRWPropagator | STTPropagator | DINOPropagator


@dataclass
class PropagationResult:
    soft: torch.Tensor  # [T, M, h, w]
    ids: torch.Tensor  # [T, H, W] uint8


def make_propagator(protocol: str, label0, **params) -> Propagator:
    if protocol not in PROTOCOLS:
        raise VcorrError(f"unknown propagation protocol {protocol!r} (known: {sorted(PROTOCOLS)})")
    propagator = PROTOCOLS[protocol]
    accepted = {
        name: parameter
        for name, parameter in inspect.signature(propagator).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise VcorrError(f"protocol {protocol}: bad parameters: unknown {', '.join(unknown)} (accepted: {', '.join(accepted)})")
    missing = [name for name, parameter in accepted.items() if parameter.default is inspect.Parameter.empty and name not in params]
    if missing:
        raise VcorrError(f"protocol {protocol}: bad parameters: missing {', '.join(missing)}")
    return propagator(label0, **params)


def propagate_stream(
    features: Iterable[torch.Tensor],
    label0,
    protocol: str,
    late: Mapping[int, object] | None = None,
    observer=None,
    **params,
) -> Iterator[PropagatedFrame]:
    """Yield every frame's propagated labels; `features` yields [K, h, w] tensors in order.

    `late`: {t: [H, W] id map} of objects first annotated at frame t (only their ids, 0 elsewhere).
    `observer`: a `vcorr.propagation.margins.MarginRecorder` to record every decision's margin.
    """
    late = dict(late or {})
    if 0 in late:
        raise VcorrError("late objects: frame 0's objects belong in the initial labels")
    propagator = make_propagator(protocol, label0, **params)
    propagator.observer = observer
    for t, frame_features in enumerate(features):
        yield propagator.push(frame_features, late.pop(t, None))
    if late:
        raise VcorrError(f"late objects at frames {sorted(late)} beyond the sequence's end")


def propagate(feats, label0, protocol: str, late=None, **params) -> PropagationResult:
    """Propagate `label0` through a whole sequence `feats` [T, K, h, w] (or an iterable of
    [K, h, w]); returns all soft labels and output maps."""
    frames = list(propagate_stream(feats, label0, protocol, late, **params))
    if not frames:
        raise VcorrError("propagate: no frames")
    return PropagationResult(
        soft=torch.stack([f.soft for f in frames]), ids=torch.stack([f.ids for f in frames])
    )
