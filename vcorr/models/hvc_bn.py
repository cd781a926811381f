"""HVC's post-load BatchNorm step: one train-mode forward pass of a zero image.

HVC's `models/encoder.py` `make_encoder` loads an encoder's weights, removes layer4 and then
calls `infer_dims(net)` to measure the output stride. `infer_dims` runs the encoder on
`torch.zeros(1, 3, 1, 256, 256)` (one 256x256 frame through `From3D`) while the network is still
in train mode, so every BatchNorm layer it reaches updates its running statistics once from that
zero image (`running = 0.9 * running + 0.1 * batch`, unbiased batch variance, momentum 0.1,
`num_batches_tracked + 1`) before `infer_vos.py` calls `.eval()`. This happens on the CPU, in
float32, for both encoders HVC fuses (its ResNet-18 and the MoCo ResNet-50), and HVC's published
numbers were computed with the statistics it leaves. videowalk is not affected: its `test.py`
loads the checkpoint after `infer_dims`, which overwrites the statistics.

`zero_image_bn_update(encoder)` reproduces the step on a vcorr encoder (built with the same
layers as HVC's network at that point: layer4 already removed, layer3 at stride 1). The method
option of the same name (config/methods.yaml) turns it on or off.
"""

from __future__ import annotations

import torch
from torch import nn

OPTION = "zero_image_bn_update"
ZERO_IMAGE_SIZE = 256  # infer_dims' in_sz


def zero_image_bn_update(encoder: nn.Module, size: int = ZERO_IMAGE_SIZE) -> nn.Module:
    """Move every BatchNorm layer's running statistics once toward a zero image's, in place.

    One forward pass of a `[1, 3, size, size]` zero tensor in train mode, on the encoder's own
    device and dtype; the encoder's previous train/eval mode is restored. Returns the encoder.
    """
    parameter = next(encoder.parameters())
    was_training = encoder.training
    encoder.train()
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype))
    finally:
        encoder.train(was_training)
    return encoder
