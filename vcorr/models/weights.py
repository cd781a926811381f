"""Import released and trained weights into the encoders of `vcorr.models`.

`load_weights(encoder, path_or_state, format)` maps a checkpoint's keys onto the encoder's
parameter names (torchvision's for the ResNets, the originals' for the ViTs of `vcorr.models.vit`), refuses shape mismatches (naming the file and the key), and returns a
`LoadReport` that accounts for every key of the checkpoint: loaded, ignored by design (with the
reason), or unexpected; plus the encoder keys the checkpoint lacks. Nothing is dropped silently.

Formats (key layouts read from each seed's own saving/loading code):

- `hvc`: HVC's training checkpoint `{"model": state, "optimizer", "epoch", "args"}` where the
  encoder is `online_encoder.<torchvision key>` (the target encoder, projectors, predictor and
  flow head are ignored by design); or a released encoder (`releases_models.zip`, written by
  HVC's `core/convert_pretrain.py` and read by `make_encoder(model_type="hvc")`): the plain state
  dict with torchvision keys, layer4 included and no `fc`. A `module.` prefix on every key
  (DataParallel) is stripped.
- `sfc`: SFC's fine-grained correspondence network (`pretrained_fc.pth`, written by its
  `train.py` `save_model` and read by `make_encoder(model_type="fine-grained")`):
  `{"model": state, "optimizer", "epoch", "args"}`, the encoder under `online_encoder.` in torchvision
  names (its `fc` and layer4 ignored as modules the encoder drops); the target encoder, both
  projectors and the predictor are ignored by design.
- `dul`: DUL (dense-ulearn-vos) snapshots (`ytvos_e060_res4.pth` ...: its `Checkpoint.checkpoint`
  `{"model": Framework state, "opt", "score", "epoch"}`, read by `infer_vos.py` after removing
  `module.` anywhere in a key): the ResNet-18 under `fast_net.backbone.` in torchvision names;
  the projection `fast_net.emb_q.` is ignored by design.
- `torchvision`: a torchvision-layout ResNet state dict, bare (torchvision's released
  `resnet18-f37072fd.pth` ..., as `load_state_dict` reads them) or under `state_dict` (VFS's
  released `*_k400-<hash>.pth`, as its backbone's `_load_torchvision_checkpoint` reads them);
  `fc.*` belongs to no encoder here (ignored as a removed module).
- `moco`: MoCo v1/v2 `{"state_dict": ...}`, encoder under `module.encoder_q.`; the key encoder
  (`module.encoder_k.`), the queue and the projection `fc.*` (v1 linear, v2 `fc.0`/`fc.2`) are
  ignored by design.
- `stt`: Spa-then-Temp (mmcv) `{"state_dict": ..., "meta", "optimizer"}`: the student under
  `backbone.` in mmcv ConvModule names (`conv1.conv`/`conv1.bn` -> `conv1`/`bn1`,
  `layerX.Y.convN.conv`/`.bn` -> `layerX.Y.convN`/`bnN`, `layerX.Y.downsample.conv`/`.bn` ->
  `downsample.0`/`.1`); the frozen teacher `backbone_t.` is ignored by design.
- `crw`: videowalk `{"model": CRW state, "optimizer", "lr_scheduler", "epoch", "args"}`: the
  encoder under `encoder.model.`; the affinity head `selfsim_fc.` is ignored by design. Keys
  saved as `...conv1.1.weight` / `...conv2.1.weight` (a padding wrapper in the training code)
  are renamed to `...conv1.weight` / `...conv2.weight`, as videowalk's `test.py` does.
- `dino`: DINO's `eval_video_segmentation.py` loader (`utils.load_pretrained_weights` with its
  default `--checkpoint_key teacher`): a released backbone file (`dino_deitsmall16_pretrain.pth`
  ...: the plain state dict) or a training checkpoint (`{student, teacher, optimizer, epoch, args,
  dino_loss}`, `*_full_checkpoint.pth`), whose `teacher` is taken. DINO removes the substrings
  `module.` and `backbone.` anywhere in a key (`str.replace`), so the teacher's `backbone.*` (a
  ViT teacher is not DDP-wrapped) and the student's `module.backbone.*` both map; the projection
  head `head.*` (DINOHead) is ignored by design. `dino_student`: the same file's `student`.
  The loader is the same for any architecture: DINO's ResNet-50 files (`dino_resnet50_pretrain.pth`,
  a torchvision state dict without `fc`) load into a ResNet-50 encoder with this format.
- `mae`: MAE's and CropMAE's `{"model": state, ...}` (MAE's released `mae_pretrain_vit_base.pth`:
  the encoder; CropMAE's training checkpoints: the whole Siamese MAE): encoder keys by name;
  the decoder (`decoder_*`) and `mask_token` are ignored by design.
- `mocov3`: MoCo v3 `{"state_dict": ..., "epoch", "arch", "optimizer", "scaler"}`: the encoder
  under `module.base_encoder.` (as its `main_lincls.py` renames it), without the projector
  `module.base_encoder.head.*`; the momentum encoder and the predictor are ignored by design.
- `dinov2`: DINOv2's released backbone (`dinov2_vits14_pretrain.pth`, what its `torch.hub`
  loader reads strictly): the plain state dict with `ls1.gamma` / `ls2.gamma`, a 37 x 37 grid
  `pos_embed` (518 px) and `mask_token` (iBOT masking, training only: ignored by design). A
  file with `register_tokens` (the `_reg4` models) is refused: those models are not supported.
- `vcorr`: this project's checkpoints, written by `save_weights`:
  `{"format": "vcorr-encoder", "version": 1, "arch": <registry name>, "encoder": <encoder
  state_dict in torchvision names>, "meta": {...free-form provenance...}}`. A file of another
  arch loads when the shapes agree (e.g. `hvc_r18_train` weights into `hvc_r18`, layer4 ignored).

Keys of modules an encoder removes (layer4 for layer3 encoders, `fc`) are ignored by design.
Missing BN `num_batches_tracked` counters are reported but never fatal (they do not affect
inference); any other missing key is an error unless `strict=False`.

Files are read with `torch.load(weights_only=True)` first. Released checkpoints that pickle other
Python objects (e.g. numpy scalars in mmcv metadata) are then read with full unpickling, which can
run code: the report notes it and a warning is emitted, so load only files you trust (the
registry's released weights). `save_weights` keeps `meta` to plain data so vcorr files never need it.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vcorr.errors import VcorrError
from vcorr.models.encoders import ResNetEncoder
from vcorr.models.vit import VisionTransformer

FORMATS = (
    "hvc", "sfc", "dul", "torchvision", "moco", "stt", "crw", "dino", "dino_student", "mae", "mocov3", "dinov2", "vcorr",
)
VCORR_FORMAT_TAG = "vcorr-encoder"
VCORR_FORMAT_VERSION = 1


@dataclass
class LoadReport:
    """Where every checkpoint key went."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)  # encoder keys filled from the checkpoint
    missing: list[str] = field(default_factory=list)  # encoder keys the checkpoint lacks
    ignored: dict[str, str] = field(default_factory=dict)  # checkpoint key -> why, by design
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys with no place
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not [key for key in self.missing if not key.endswith("num_batches_tracked")]

    def summary(self) -> str:
        return (
            f"{self.source} ({self.format}): {len(self.loaded)} tensors loaded, "
            f"{len(self.missing)} missing, {len(self.ignored)} ignored by design, "
            f"{len(self.unexpected)} unexpected"
        )


# A mapping step: checkpoint key -> ("load", encoder key) | ("ignore", reason) | ("unexpected", "").
KeyRule = Callable[[str], tuple[str, str]]


def _strip(key: str, prefix: str) -> str | None:
    return key[len(prefix):] if key.startswith(prefix) else None


def _online_encoder_rule(training_only: tuple[str, ...], reason: str) -> KeyRule:
    """The rule of a BYOL-style training checkpoint (HVC's, SFC's): the encoder under
    `online_encoder.`, the listed top-level modules ignored by design."""

    def rule(key: str) -> tuple[str, str]:
        name = _strip(key, "online_encoder.")
        if name is not None:
            return "load", name
        if key.split(".", 1)[0] in training_only:
            return "ignore", reason
        return "unexpected", ""

    return rule


_rule_hvc_training = _online_encoder_rule(
    ("target_encoder", "online_space_projector", "target_space_projector", "space_predictor", "flow"),
    "HVC training-only module (target network, projectors, predictor, flow head)",
)
_rule_sfc = _online_encoder_rule(
    ("target_encoder", "online_projector", "target_projector", "predictor"),
    "SFC training-only module (target network, projectors, predictor)",
)


def _rule_dul(key: str) -> tuple[str, str]:
    # infer_vos.py's convert_dict removes `module.` anywhere (DataParallel-wrapped submodules).
    name = key.replace("module.", "")
    backbone = _strip(name, "fast_net.backbone.")
    if backbone is not None:
        return "load", backbone
    if name.startswith("fast_net.emb_q."):
        return "ignore", "DUL projection head (emb_q)"
    return "unexpected", ""


def _rule_plain(key: str) -> tuple[str, str]:
    return "load", key


def _rule_moco(key: str) -> tuple[str, str]:
    name = _strip(key, "module.encoder_q.")
    if name is not None:
        return "load", name
    if key.startswith("module.encoder_k.") or key in {"module.queue", "module.queue_ptr"}:
        return "ignore", "MoCo key encoder / queue"
    return "unexpected", ""


_MMCV_CONV_MODULE = re.compile(r"^(?P<block>(?:layer\d+\.\d+\.)?)(?P<module>conv\d|downsample)\.(?P<kind>conv|bn)\.(?P<param>.+)$")


def mmcv_to_torchvision_key(name: str) -> str | None:
    """An mmcv ConvModule ResNet key (`layer1.0.conv1.bn.weight`) as torchvision names it
    (`layer1.0.bn1.weight`); None for a key of no conv module."""
    match = _MMCV_CONV_MODULE.match(name)
    if match is None:
        return None
    block, module, kind, param = match.group("block", "module", "kind", "param")
    if module == "downsample":
        torchvision_module = "downsample.0" if kind == "conv" else "downsample.1"
    else:
        torchvision_module = module if kind == "conv" else module.replace("conv", "bn")
    return f"{block}{torchvision_module}.{param}"


def _rule_stt(key: str) -> tuple[str, str]:
    if key.startswith("backbone_t."):
        return "ignore", "Spa-then-Temp frozen teacher"
    name = _strip(key, "backbone.")
    if name is None:
        return "unexpected", ""
    torchvision_key = mmcv_to_torchvision_key(name)
    if torchvision_key is None:
        # `fc.*` exists only with fc=True; anything else has no torchvision counterpart.
        return ("load", name) if name.startswith("fc.") else ("unexpected", "")
    return "load", torchvision_key


_CRW_WRAPPED_CONV = re.compile(r"(^|\.)(conv[12])\.1\.weight$")


def _rule_crw(key: str) -> tuple[str, str]:
    name = _strip(key, "encoder.model.")
    if name is not None:
        return "load", _CRW_WRAPPED_CONV.sub(r"\1\2.weight", name)
    if key.startswith("selfsim_fc."):
        return "ignore", "CRW affinity head"
    return "unexpected", ""


def _rule_dino(key: str) -> tuple[str, str]:
    name = key.replace("module.", "").replace("backbone.", "")
    if name.startswith("head."):
        return "ignore", "DINO projection head"
    return "load", name


def _rule_mae(key: str) -> tuple[str, str]:
    if key.startswith("decoder_") or key == "mask_token":
        return "ignore", "MAE decoder (pretraining only)"
    return "load", key


def _rule_mocov3(key: str) -> tuple[str, str]:
    name = _strip(key, "module.base_encoder.")
    if name is not None:
        return ("ignore", "MoCo v3 projector") if name.startswith("head.") else ("load", name)
    if key.startswith(("module.momentum_encoder.", "module.predictor.")):
        return "ignore", "MoCo v3 momentum encoder / predictor"
    return "unexpected", ""


def _rule_dinov2(key: str) -> tuple[str, str]:
    if key == "mask_token":
        return "ignore", "DINOv2 mask token (training only)"
    return "load", key


# Formats whose state dict is one entry of the checkpoint: (entry, key rule).
_ENTRY_FORMATS: dict[str, tuple[str, KeyRule]] = {
    "sfc": ("model", _rule_sfc),
    "dul": ("model", _rule_dul),
    "moco": ("state_dict", _rule_moco),
    "stt": ("state_dict", _rule_stt),
    "crw": ("model", _rule_crw),
    "dino_student": ("student", _rule_dino),
    "mae": ("model", _rule_mae),
    "mocov3": ("state_dict", _rule_mocov3),
}


def _read(path: Path) -> tuple[Any, str | None]:
    """(checkpoint, note): torch.load restricted to tensors and plain data (argparse args allowed);
    full unpickling only as a fallback, noted in the report and warned about."""
    if not path.is_file():
        raise VcorrError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as safe_error:  # noqa: BLE001 - classified below
        lines = str(safe_error).splitlines() or [type(safe_error).__name__]
        safe_message = next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
    try:
        # Released checkpoints often pickle extra Python objects (argparse args, numpy scalars in
        # mmcv metadata); these files are ones the user chose to load.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure means "not a checkpoint"
        raise VcorrError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    return checkpoint, f"loaded with full unpickling (restricted load refused: {safe_message})"


def _tensor_dict(candidate: Any, source: str, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(candidate, Mapping) or not candidate:
        raise VcorrError(f"{source}: {what} is not a state dict")
    bad = [key for key, value in candidate.items() if not isinstance(key, str) or not torch.is_tensor(value)]
    if bad:
        raise VcorrError(f"{source}: {what} is not a state dict (entry {bad[0]!r} is not a tensor)")
    return dict(candidate)


def _strip_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def _select(checkpoint: Any, format: str, source: str, report: LoadReport) -> tuple[dict[str, torch.Tensor], KeyRule]:
    """The checkpoint's state dict and the key rule of `format`."""
    container = checkpoint if isinstance(checkpoint, Mapping) else None
    if container is None:
        raise VcorrError(f"{source}: not a checkpoint (holds a {type(checkpoint).__name__}, not a dict)")

    def entry(name: str) -> dict[str, torch.Tensor]:
        if name not in container:
            raise VcorrError(
                f"{source}: no {name!r} entry, as a {format} checkpoint has (found: "
                f"{', '.join(map(str, list(container)[:8]))})"
            )
        return _tensor_dict(container[name], source, f"entry {name!r}")

    if format == "hvc":
        if "model" in container:
            return _strip_data_parallel(entry("model")), _rule_hvc_training
        return _strip_data_parallel(_tensor_dict(container, source, "the file")), _rule_plain
    if format == "torchvision":
        # VFS's loader takes `state_dict` when the file has one, else the file itself.
        if "state_dict" in container:
            return entry("state_dict"), _rule_plain
        return _tensor_dict(container, source, "the file"), _rule_plain
    if format in _ENTRY_FORMATS:
        name, rule = _ENTRY_FORMATS[format]
        return entry(name), rule
    if format == "dino":
        # DINO's loader takes `teacher` when the file has one (its default --checkpoint_key).
        if "teacher" in container:
            return entry("teacher"), _rule_dino
        if not all(torch.is_tensor(value) for value in container.values()):
            raise VcorrError(f"{source}: neither a DINO backbone state dict nor a DINO training checkpoint "
                             f"with a 'teacher' entry (found: {', '.join(map(str, list(container)[:8]))})")
        return _tensor_dict(container, source, "the file"), _rule_dino
    if format == "dinov2":
        state = _tensor_dict(container, source, "the file")
        if "register_tokens" in state:
            raise VcorrError(f"{source}: a DINOv2 model with register tokens (register_tokens, the _reg models); "
                             "only the models without registers are supported")
        return state, _rule_dinov2
    if format == "vcorr":
        if container.get("format") != VCORR_FORMAT_TAG:
            raise VcorrError(f"{source}: not a vcorr encoder checkpoint (no format: {VCORR_FORMAT_TAG!r})")
        report.notes.append(f"saved from arch {container.get('arch')!r}")
        return entry("encoder"), _rule_plain
    raise VcorrError(f"unknown checkpoint format {format!r}; expected one of {', '.join(FORMATS)}")


def load_weights(
    encoder: ResNetEncoder | VisionTransformer,
    source: str | Path | Mapping,
    format: str,
    strict: bool = True,
) -> LoadReport:
    """Load `source` (a file, or an already-loaded checkpoint object) into `encoder` in place."""
    if format not in FORMATS:
        raise VcorrError(f"unknown checkpoint format {format!r}; expected one of {', '.join(FORMATS)}")
    if isinstance(source, Mapping):
        checkpoint, note, name = source, None, "<in-memory checkpoint>"
    else:
        checkpoint, note = _read(Path(source))
        name = str(source)
    report = LoadReport(source=name, format=format)
    if note:
        report.notes.append(note)
        warnings.warn(f"{name}: {note}", stacklevel=2)
    state, rule = _select(checkpoint, format, name, report)

    target = encoder.state_dict()
    removed = encoder.removed_modules
    incoming: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state.items():
        action, value = rule(key)
        if action == "ignore":
            report.ignored[key] = value
            continue
        if action == "unexpected":
            report.unexpected.append(key)
            continue
        if value.split(".", 1)[0] in removed:
            report.ignored[key] = f"{value.split('.', 1)[0]} is not part of {encoder.spec.name}"
            continue
        if value not in target:
            report.unexpected.append(key)
            continue
        if value in incoming:
            raise VcorrError(f"{name}: keys {origin[value]!r} and {key!r} both map to {value!r}")
        if tuple(tensor.shape) != tuple(target[value].shape):
            raise VcorrError(
                f"{name}: key {key!r} has shape {tuple(tensor.shape)}, but {encoder.spec.name}'s "
                f"{value!r} has shape {tuple(target[value].shape)} (wrong format or architecture?)"
            )
        incoming[value] = tensor
        origin[value] = key
    report.loaded = list(incoming)
    report.missing = [key for key in target if key not in incoming]
    if strict and not report.complete:
        fatal = [key for key in report.missing if not key.endswith("num_batches_tracked")]
        raise VcorrError(
            f"{name}: {len(fatal)} weights of {encoder.spec.name} are not in this {format} "
            f"checkpoint (first: {', '.join(fatal[:5])}); unexpected keys: "
            f"{', '.join(report.unexpected[:5]) or 'none'}"
        )
    target.update(incoming)
    encoder.load_state_dict(target)
    return report


def cpu_state_dict(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """`module`'s state dict detached on the CPU, each key prefixed (`module.` for MoCo's DDP
    layout, `backbone.` for mmcv's): the tensors every exported checkpoint holds."""
    return {f"{prefix}{key}": value.detach().cpu() for key, value in module.state_dict().items()}


def vcorr_checkpoint(encoder: ResNetEncoder | VisionTransformer, meta: Mapping | None = None) -> dict:
    """The vcorr checkpoint object of `encoder` (format tag, version, arch, CPU state dict, `meta`
    as provenance in plain data): what `save_weights` writes and format `vcorr` loads."""
    return {
        "format": VCORR_FORMAT_TAG,
        "version": VCORR_FORMAT_VERSION,
        "arch": encoder.spec.name,
        "encoder": cpu_state_dict(encoder),
        "meta": dict(meta or {}),
    }


def save_weights(encoder: ResNetEncoder | VisionTransformer, path: str | Path, meta: Mapping | None = None) -> None:
    """Write `encoder` as a vcorr checkpoint (atomically); `meta` holds provenance (plain data)."""
    from vcorr.io import atomic_file

    with atomic_file(path) as temporary:
        torch.save(vcorr_checkpoint(encoder, meta), temporary)
