"""Encoders (torchvision ResNets with the seeds' modifications) and checkpoint import."""

from vcorr.models.encoders import ENCODERS, EncoderSpec, ResNetEncoder, build_encoder

__all__ = ["ENCODERS", "EncoderSpec", "ResNetEncoder", "build_encoder"]
