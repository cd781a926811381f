"""What turns frames into features, as method configs write it: the encoder(s) -- an arch of
`vcorr.models.build_encoder`, where its checkpoint is (`WeightsSource`) or a seed for a random
initialisation --, their fusion and the input normalisation; validated when built
(`feature_config`). Free of torch: the workflow reads method entries at DAG time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcorr.config import is_int
from vcorr.errors import VcorrError

INPUTS = ("imagenet_rgb", "dino_rgb", "lab")
# Late fusions of two encoders' features, `normalize(concat(w * normalize(f_0), normalize(f_1)))`,
# by the weight w of the first: HVC's infer_vos.py (1.05) and SFC's test_vos.py `--lambd` default
# (1.75), the fine-grained network first and the MoCo v1 ResNet-50 second in both.
FUSION_WEIGHTS = {"hvc": 1.05, "sfc": 1.75}
FUSIONS = (None, *FUSION_WEIGHTS)
# How many encoders each fusion combines.
FUSION_ENCODERS = {None: 1, **{name: 2 for name in FUSION_WEIGHTS}}


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's checkpoint is: a registry download, `<weights_root>/<id>/<file>`
    (`{id, file, format}`), or a file the workflow itself produces, e.g. a trained model under
    `results/` (`{path, format}`, relative to the working directory)."""

    format: str  # a checkpoint format of vcorr.models.weights.FORMATS
    id: str | None = None
    file: str | None = None
    path: str | None = None

    def resolve(self, weights_root: str | Path | None) -> Path:
        """The one place a checkpoint's path is built."""
        if self.path is not None:
            return Path(self.path)
        if weights_root is None:
            raise VcorrError(f"weights {self.id}/{self.file} need a weights root, none was given")
        return Path(weights_root) / self.id / self.file

    def how_to_get(self) -> str:
        if self.path is not None:
            return "a file the workflow produces: run the step that writes it first"
        return f"get them with `vcorr data fetch {self.id}` then `vcorr data extract {self.id}`, or pass --weights-root"

    def as_dict(self) -> dict[str, str]:
        if self.path is not None:
            return {"path": self.path, "format": self.format}
        return {"id": self.id, "file": self.file, "format": self.format}


@dataclass(frozen=True)
class EncoderConfig:
    arch: str  # a vcorr.models.build_encoder name
    weights: WeightsSource | None = None  # None: random initialisation drawn with `seed`
    seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"arch": self.arch, "weights": self.weights.as_dict() if self.weights else None}
        if self.seed is not None:
            entry["seed"] = self.seed
        return entry


@dataclass(frozen=True)
class FeatureConfig:
    """What turns frames into features: the encoder(s), their fusion and input normalisation.
    Validated when built (`feature_config`); `vcorr.features.FeatureExtractor` takes it as given."""

    encoders: tuple[EncoderConfig, ...]
    fusion: str | None = None
    input: str = "imagenet_rgb"


def feature_config(
    encoders: Any, fusion: Any = None, input: Any = "imagenet_rgb", source: str = "method config"
) -> FeatureConfig:
    """`encoders` as method configs write them (a list of mappings), checked, as a FeatureConfig."""
    if input not in INPUTS:
        raise VcorrError(f"{source}: input '{input}' is not one of {', '.join(INPUTS)}")
    if fusion not in FUSIONS:
        raise VcorrError(f"{source}: fusion '{fusion}' is not null or one of {', '.join(FUSION_WEIGHTS)}")
    if not isinstance(encoders, list) or not encoders:
        raise VcorrError(f"{source}: encoders must be a non-empty list")
    expected = FUSION_ENCODERS[fusion]
    if fusion is not None and len(encoders) != expected:
        raise VcorrError(f"{source}: fusion {fusion} fuses exactly two encoders: needs {expected}, {len(encoders)} given")
    if fusion is None and len(encoders) != expected:
        raise VcorrError(f"{source}: {len(encoders)} encoders need a fusion ({', '.join(FUSION_WEIGHTS)})")
    parsed = tuple(_encoder_config(encoder, f"{source}: encoders[{index}]") for index, encoder in enumerate(encoders))
    return FeatureConfig(parsed, fusion, input)


def _encoder_config(encoder: Any, where: str) -> EncoderConfig:
    from vcorr.models.weights import FORMATS

    if not isinstance(encoder, dict) or not isinstance(encoder.get("arch"), str) or not encoder["arch"]:
        raise VcorrError(f"{where}: needs an arch (an encoder name of vcorr.models)")
    unknown = sorted(set(encoder) - {"arch", "weights", "seed"})
    if unknown:
        raise VcorrError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: arch, weights, seed)")
    weights = encoder.get("weights")
    if weights is None:
        if not is_int(encoder.get("seed")):
            raise VcorrError(f"{where}: a randomly initialised encoder (weights: null) needs an integer seed")
        return EncoderConfig(encoder["arch"], None, encoder["seed"])
    if not isinstance(weights, dict) or sorted(weights) not in (["file", "format", "id"], ["format", "path"]):
        raise VcorrError(f"{where}.weights: must be null or {{id, file, format}} (a registry download) or {{path, format}} (a file the workflow produces)")
    if weights["format"] not in FORMATS:
        raise VcorrError(f"{where}.weights.format '{weights['format']}' is not one of {', '.join(FORMATS)}")
    if "seed" in encoder:
        raise VcorrError(f"{where}: seed is only for random init (weights: null)")
    if "path" in weights:
        return EncoderConfig(encoder["arch"], WeightsSource(str(weights["format"]), path=str(weights["path"])))
    file = Path(str(weights["file"]))
    if file.is_absolute() or ".." in file.parts:
        raise VcorrError(f"{where}.weights.file must be a path inside resources/data/<id>/, got '{file}'")
    return EncoderConfig(encoder["arch"], WeightsSource(str(weights["format"]), str(weights["id"]), str(weights["file"])))
