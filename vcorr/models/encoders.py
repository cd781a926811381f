"""The encoders the seeds evaluate, built from torchvision's ResNets with the seeds' modifications.

Each registry entry names a torchvision ResNet depth, the stride of each stage's first block,
the stem pooling, the last stage kept and the padding mode. Strides are edited in place on the
torchvision modules (`vcorr.models.resnet`: torchvision's ResNet module for module, without
importing torchvision), so the parameter names stay torchvision's (`conv1.weight`,
`layer3.0.downsample.0.weight`, ...) and released weights map onto them.

| name          | seed / use                      | stage strides | stem pool | output | channels | stride |
|---------------|---------------------------------|---------------|-----------|--------|----------|--------|
| hvc_r18       | HVC inference (1)               | 1, 2, 1, (1)  | max       | layer3 | 256      | 8      |
| hvc_r18_train | HVC training (HVC's init)       | 1, 2, 1, 1    | max       | layer4 | 512      | 8      |
| moco_r50      | MoCo R50 for HVC's fusion (2)   | 1, 2, 1, (1)  | max       | layer3 | 1024     | 8      |
| dul_r18       | DUL's "res4" (dense-ulearn-vos) | 1, 2, 1, 1    | max       | layer4 | 512      | 8      |
| stt_r18_s8    | Spa-then-Temp R18 "s8"          | 1, 2, 2, (1)  | none      | layer3 | 256      | 8      |
| stt_r50_s8    | Spa-then-Temp R50 "s8"          | 1, 2, 2, (1)  | none      | layer3 | 1024     | 8      |
| stt_r18_s4    | Spa-then-Temp R18 "s4"          | 1, 1, 1, (1)  | mean      | layer3 | 256      | 4      |
| stt_r50_s4    | Spa-then-Temp R50 "s4"          | 1, 1, 1, (1)  | mean      | layer3 | 1024     | 4      |
| crw_r18       | videowalk (CRW), reflect pad    | 1, 2, 1, (1)  | max       | layer3 | 256      | 8      |

(A stride in brackets belongs to a removed stage; the stem convolution always has stride 2.)
The same network serves every released model of that shape, whatever trained it: (1) is also
VFS's ResNet-18 (its test_cfg strides 1, 2, 1, 1, layer3), SFC's fine-grained ResNet-18 and
videowalk's `imagenet18` baseline (torchvision's weights); (2) is also VFS's ResNet-50, the
ImageNet-supervised, MoCo v2 and DINO ResNet-50s of the comparison methods (config/methods.yaml).

Vision Transformers (DINO, MAE, MoCo v3, DINOv2, CropMAE) are a sibling registry,
`vcorr.models.vit.VIT_ENCODERS`, which `build_encoder` consults too.

Baselines without a network (`PIXEL_ENCODERS`): `raw_rgb_s8` is the input itself, average-pooled
over 8x8 blocks (3 channels, stride 8, no weights), so a table shows what any training adds.
Where the seeds set a stage's stride to 1 they set every convolution of that stage to stride 1,
1x1 downsample included, without dilation; for the first block of a torchvision stage that is the
same as setting the strided 3x3 convolution and the downsample convolution to 1, which is what
`set_stage_stride` does. videowalk's test-time encoder (`--model-type scratch`) also switches every
padded convolution to reflect padding, which `crw_r18` reproduces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vcorr.errors import VcorrError
from vcorr.models.resnet import BasicBlock, Bottleneck, ResNet, resnet
from vcorr.models.vit import VIT_ENCODERS, VisionTransformer

StemPool = Literal["max", "mean", "none"]
Init = Literal["torchvision", "hvc"]

STAGES = ("layer1", "layer2", "layer3", "layer4")
# Top-level modules of a torchvision ResNet that own parameters; `fc` never survives here.
TORCHVISION_MODULES = ("conv1", "bn1", *STAGES, "fc")


@dataclass(frozen=True)
class EncoderSpec:
    """How one encoder differs from a plain torchvision ResNet."""

    name: str
    depth: Literal[18, 50]
    stage_strides: tuple[int, int, int, int]
    stem_pool: StemPool
    last_stage: Literal["layer3", "layer4"]
    padding_mode: Literal["zeros", "reflect"] = "zeros"
    init: Init = "torchvision"
    description: str = ""

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES[: STAGES.index(self.last_stage) + 1]

    @property
    def stride(self) -> int:
        """Output stride: stem conv (2) x stem pool (2 or 1) x kept stages' strides."""
        stride = 2 * (1 if self.stem_pool == "none" else 2)
        for stage_stride in self.stage_strides[: len(self.stages)]:
            stride *= stage_stride
        return stride

    @property
    def channels(self) -> int:
        width = 64 * 2 ** (len(self.stages) - 1)
        return width * (4 if self.depth == 50 else 1)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec("hvc_r18", 18, (1, 2, 1, 1), "max", "layer3",
                    description="HVC inference encoder: ResNet-18 layer3, 256-d, stride 8"),
        EncoderSpec("hvc_r18_train", 18, (1, 2, 1, 1), "max", "layer4", init="hvc",
                    description="HVC training encoder: ResNet-18 layer4, 512-d, stride 8, HVC init"),
        EncoderSpec("moco_r50", 50, (1, 2, 1, 1), "max", "layer3",
                    description="MoCo ResNet-50 layer3 (stride 1), 1024-d, stride 8, for HVC fusion"),
        EncoderSpec("dul_r18", 18, (1, 2, 1, 1), "max", "layer4",
                    description="DUL ResNet-18 res4: layer4 (layer3 and layer4 at stride 1), 512-d, stride 8"),
        EncoderSpec("stt_r18_s8", 18, (1, 2, 2, 1), "none", "layer3",
                    description="Spa-then-Temp ResNet-18 s8: strides 1,2,2,1, no stem pool, layer3"),
        EncoderSpec("stt_r50_s8", 50, (1, 2, 2, 1), "none", "layer3",
                    description="Spa-then-Temp ResNet-50 s8: strides 1,2,2,1, no stem pool, layer3"),
        EncoderSpec("stt_r18_s4", 18, (1, 1, 1, 1), "mean", "layer3",
                    description="Spa-then-Temp ResNet-18 s4: strides 1,1,1,1, mean-pool stem, layer3"),
        EncoderSpec("stt_r50_s4", 50, (1, 1, 1, 1), "mean", "layer3",
                    description="Spa-then-Temp ResNet-50 s4: strides 1,1,1,1, mean-pool stem, layer3"),
        EncoderSpec("crw_r18", 18, (1, 2, 1, 1), "max", "layer3", padding_mode="reflect",
                    description="videowalk (CRW) ResNet-18 layer3, reflect padding, stride 8"),
    )
}


class ResNetEncoder(nn.Module):
    """A torchvision ResNet cut after `spec.last_stage`, keeping torchvision's module names."""

    def __init__(self, spec: EncoderSpec, network: ResNet) -> None:
        super().__init__()
        self.spec = spec
        self.conv1 = network.conv1
        self.bn1 = network.bn1
        self.relu = network.relu
        self.pool: nn.Module | None = {
            "max": network.maxpool,
            # Spa-then-Temp's "mean" stem: AvgPool2d(3, 2, 1), padding counted (PyTorch default).
            "mean": nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
            "none": None,
        }[spec.stem_pool]
        for stage in spec.stages:
            setattr(self, stage, getattr(network, stage))

    @property
    def stride(self) -> int:
        return self.spec.stride

    @property
    def out_channels(self) -> int:
        return self.spec.channels

    # Convolutions take any input size (features follow the convolution arithmetic).
    input_multiple = 1

    @property
    def removed_modules(self) -> tuple[str, ...]:
        """torchvision modules this encoder drops (their checkpoint keys are ignored by design)."""
        return tuple(name for name in TORCHVISION_MODULES if not hasattr(self, name))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.relu(self.bn1(self.conv1(images)))
        if self.pool is not None:
            features = self.pool(features)
        for stage in self.spec.stages:
            features = getattr(self, stage)(features)
        return features


def set_stage_stride(stage: nn.Sequential, stride: int) -> None:
    """Set the stride of a torchvision ResNet stage in place (its first block carries it)."""
    first = stage[0]
    strided_conv = first.conv2 if isinstance(first, Bottleneck) else first.conv1
    strided_conv.stride = (stride, stride)
    if first.downsample is not None:
        first.downsample[0].stride = (stride, stride)
    first.stride = stride


def set_padding_mode(module: nn.Module, mode: str) -> None:
    """Switch every padded convolution to `mode` (videowalk's reflect padding)."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d) and any(conv.padding):
            conv.padding_mode = mode


def hvc_init(module: nn.Module) -> None:
    """HVC's initialisation: conv ~ N(0, sqrt(2 / (k*k*out))), BN (1, 0), last BN of a block 0."""
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            fan_out = sub.kernel_size[0] * sub.kernel_size[1] * sub.out_channels
            nn.init.normal_(sub.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(sub, nn.BatchNorm2d):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
    for sub in module.modules():
        if isinstance(sub, BasicBlock):
            nn.init.zeros_(sub.bn2.weight)
        elif isinstance(sub, Bottleneck):
            nn.init.zeros_(sub.bn3.weight)


class PooledPixels(nn.Module):
    """The normalised input pixels averaged over `stride` x `stride` blocks: the raw-pixel baseline."""

    removed_modules: tuple[str, ...] = TORCHVISION_MODULES  # no parameters: a checkpoint has nothing to give
    input_multiple = 1  # average pooling floors like a convolution

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.out_channels = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(images, self.stride)


# Encoders without weights, by name: their output stride.
PIXEL_ENCODERS: dict[str, int] = {"raw_rgb_s8": 8}


def encoder_names() -> list[str]:
    """Every arch `build_encoder` knows."""
    return sorted([*ENCODERS, *VIT_ENCODERS, *PIXEL_ENCODERS])


def build_encoder(arch: str) -> ResNetEncoder | VisionTransformer | PooledPixels:
    """The encoder registered as `arch`, randomly initialised (seed the global RNG beforehand)."""
    if arch in PIXEL_ENCODERS:
        return PooledPixels(PIXEL_ENCODERS[arch])
    if arch in VIT_ENCODERS:
        return VisionTransformer(VIT_ENCODERS[arch])
    try:
        spec = ENCODERS[arch]
    except KeyError:
        raise VcorrError(f"unknown encoder {arch!r}; known encoders: {', '.join(encoder_names())}") from None
    network = resnet(spec.depth)
    for stage, stride in zip(STAGES, spec.stage_strides):
        set_stage_stride(getattr(network, stage), stride)
    if spec.padding_mode != "zeros":
        set_padding_mode(network, spec.padding_mode)
    if spec.init == "hvc":
        hvc_init(network)
    return ResNetEncoder(spec, network)
