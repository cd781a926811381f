"""Evaluation methods: load one from config/methods.yaml (by name) or from a YAML file, validate
it, and resolve its settings for one benchmark (protocol parameters and input size), with
`--set KEY=VALUE` overrides.

The schema is documented at the top of config/methods.yaml. Validation happens on load, so a
typo in a method file is reported with the file and key before any frame is read.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vcorr.errors import VcorrError
from vcorr.config import config_dir, load_registry
from vcorr.evaluation.cross_protocol import check_protocols, split_name, variant_entry

INPUTS = ("imagenet_rgb", "lab")
FUSIONS = (None, "hvc")
# How many encoders each fusion combines.
FUSION_ENCODERS = {None: 1, "hvc": 2}

# Parameters of each protocol (propagation.md) and the type each must have. A bool is not
# accepted where a number is expected (YAML `yes` would otherwise pass as 1).
PROTOCOL_PARAMS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "crw": {"cxt_size": int, "radius": (int, float), "topk": int, "temp": (int, float)},
    "stt": {"precede": int, "topk": int, "temp": (int, float), "nrange": int, "with_first_neighbor": bool},
}
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {"crw": {}, "stt": {"with_first_neighbor": True}}

# Method options: switches of the method's pipeline (not of its protocol), set in the method's
# entry and overridable per run with `--set`. Each maps to (type, default for a method).
# zero_image_bn_update: HVC's post-load BN step (vcorr.models.hvc_bn); on by default for methods
# that use HVC's test-time fusion, i.e. HVC's published pipeline (models/encoder.py make_encoder).
# ties: whose torch.topk choice among exact affinity ties propagation reproduces, the originals'
# run on the CPU ("cpu", as ../shared/testdata's references were made) or on a GPU ("cuda");
# vcorr.propagation.affinity.TIE_RULES.
METHOD_OPTIONS: dict[str, tuple[type, Any]] = {
    "zero_image_bn_update": (bool, lambda data: data.get("fusion") == "hvc"),
    "ties": (str, lambda data: "cpu"),
}


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
        raise VcorrError(f"{source}: fusion '{fusion}' is not null or hvc")
    if not isinstance(encoders, list) or not encoders:
        raise VcorrError(f"{source}: encoders must be a non-empty list")
    expected = FUSION_ENCODERS[fusion]
    if fusion is not None and len(encoders) != expected:
        raise VcorrError(f"{source}: fusion {fusion} fuses exactly two encoders: needs {expected}, {len(encoders)} given")
    if fusion is None and len(encoders) != expected:
        raise VcorrError(f"{source}: {len(encoders)} encoders need a fusion (hvc)")
    parsed = tuple(_encoder_config(encoder, f"{source}: encoders[{index}]") for index, encoder in enumerate(encoders))
    return FeatureConfig(parsed, fusion, input)


@dataclass(frozen=True)
class BenchmarkSettings:
    """What propagation needs for one (method, benchmark) pair."""

    protocol: str
    params: dict[str, Any]  # keyword arguments of vcorr.propagation.propagate
    size: None | tuple[int, int] | dict[str, int]  # None, (H, W) or {"short_side": N}
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # METHOD_OPTIONS, resolved

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) the encoder sees for a frame of `height` x `width`."""
        if self.size is None:
            return height, width
        if isinstance(self.size, dict):
            scale = self.size["short_side"] / min(height, width)
            # Round half up like mmcv's rescale_size (Spa-then-Temp's Resize with keep_ratio).
            return int(height * scale + 0.5), int(width * scale + 0.5)
        return self.size

    def as_dict(self) -> dict[str, Any]:
        size = list(self.size) if isinstance(self.size, tuple) else self.size
        return {"protocol": self.protocol, **self.params, "size": size, **self.options}


@dataclass(frozen=True)
class Method:
    name: str
    source: str  # the file it was read from (for messages and provenance)
    description: str
    features: FeatureConfig
    protocol: str
    benchmarks: dict[str, dict[str, Any]]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # METHOD_OPTIONS, resolved

    @property
    def encoders(self) -> tuple[EncoderConfig, ...]:
        return self.features.encoders

    @property
    def fusion(self) -> str | None:
        return self.features.fusion

    @property
    def input(self) -> str:
        return self.features.input

    def settings_for(self, benchmark: str, overrides: list[str] | None = None) -> BenchmarkSettings:
        if benchmark not in self.benchmarks:
            raise VcorrError(
                f"{self.source}: method '{self.name}' has no settings for benchmark '{benchmark}' "
                f"(it supports: {', '.join(self.benchmarks)})"
            )
        return resolve_settings(
            self.protocol, self.benchmarks[benchmark], parse_overrides(overrides or []),
            where=f"{self.source}: {self.name}.benchmarks.{benchmark}",
            origin="--set ", applied=f"--set {' '.join(overrides)}" if overrides else "", options=self.options,
        )

    def weight_files(self, weights_root: str | Path) -> list[Path]:
        """The checkpoint files this method reads (see WeightsSource.resolve)."""
        return [encoder.weights.resolve(weights_root) for encoder in self.encoders if encoder.weights]

    def check_weights(self, weights_root: str | Path) -> None:
        for encoder in self.encoders:
            if encoder.weights:
                path = encoder.weights.resolve(weights_root)
                if not path.is_file():
                    label = encoder.weights.id or encoder.weights.path
                    raise VcorrError(
                        f"{path}: missing (weights '{label}' of method '{self.name}'; {encoder.weights.how_to_get()})"
                    )

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "encoders": [encoder.as_dict() for encoder in self.encoders],
            "fusion": self.fusion,
            "input": self.input,
            "protocol": self.protocol,
            **self.options,
        }


def resolve_settings(
    protocol: str, entry: dict[str, Any], overrides: dict[str, Any], where: str, origin: str = "--set ",
    applied: str = "", options: dict[str, Any] | None = None,
) -> BenchmarkSettings:
    """A method's settings `entry` for one benchmark with `overrides` applied, checked.

    The one check of protocol parameters: `vcorr propagate --set` and the workflow's config
    `propagation.set` (checked when the DAG is built) both come here. Messages name an unknown
    override as `<origin><key>` and end a bad value's with `(after <applied>)`.
    """
    merged = {**PROTOCOL_DEFAULTS[protocol], **copy.deepcopy(entry)}
    options = dict(options or {})
    for key, value in overrides.items():
        if key in METHOD_OPTIONS:
            options[key] = _check_option(key, value, origin.strip() or where)
            continue
        if key != "size" and key not in PROTOCOL_PARAMS[protocol]:
            allowed = ", ".join([*PROTOCOL_PARAMS[protocol], "size", *METHOD_OPTIONS])
            raise VcorrError(f"{origin}{key}: not a parameter of protocol '{protocol}' (allowed: {allowed})")
        merged[key] = value
    try:
        size = _check_size(merged.pop("size", None), where)
        _check_params(protocol, merged, where)
    except VcorrError as error:
        if not overrides:
            raise
        raise VcorrError(f"{error} (after {applied})") from None
    return BenchmarkSettings(protocol, merged, size, options)


def load_method(name_or_file: str | Path) -> Method:
    """A method by registry name, or from a YAML file holding one method's keys."""
    text = str(name_or_file)
    registry_file = config_dir() / "methods.yaml"
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise VcorrError(f"{path}: method config file missing")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise VcorrError(f"{path}: invalid YAML ({error})") from None
        name = path.stem
        # A copy of a registry entry (`<name>: {encoders: ...}`) is accepted as well.
        if isinstance(data, dict) and len(data) == 1 and "encoders" not in data:
            (name, data), = data.items()
        return validate_method(name, data, str(path))
    registry = load_registry("methods")
    if text in registry:
        return validate_method(text, registry[text], f"{registry_file} [{text}]")
    base, protocol = split_name(text)
    if protocol is not None:
        return _load_variant(text, base, protocol, registry)
    raise VcorrError(f"unknown method '{text}': not a file and not in {registry_file} (known: {', '.join(registry)})")


def _load_variant(name: str, base: str, protocol: str, registry: dict[str, Any]) -> Method:
    """`<method>@<protocol>` (vcorr.evaluation.cross_protocol), checked like a registry entry."""
    protocols_file = config_dir() / "protocols.yaml"
    if base not in registry:
        raise VcorrError(f"unknown method '{base}' in '{name}': not in {config_dir() / 'methods.yaml'} (known: {', '.join(registry)})")
    if protocol not in PROTOCOL_PARAMS:
        raise VcorrError(f"'{name}': protocol '{protocol}' is not one of {', '.join(PROTOCOL_PARAMS)}")
    protocols = load_registry("protocols") if protocols_file.is_file() else {}
    check_protocols(protocols, registry, str(protocols_file))
    entry = variant_entry(name, registry, protocols)
    if entry is None:
        why = (f"{protocol} is the method's own protocol: use '{base}'" if registry[base]["protocol"] == protocol
               else f"{protocols_file} names no reference method for protocol {protocol}")
        raise VcorrError(f"'{name}': {why}")
    return validate_method(name, entry, f"{protocols_file} [{name}]")


def validate_method(name: str, data: Any, source: str) -> Method:
    if not isinstance(data, dict):
        raise VcorrError(f"{source}: a method must be a mapping with keys encoders, input, protocol, benchmarks")
    required = ("encoders", "input", "protocol", "benchmarks")
    missing = [key for key in required if key not in data]
    if missing:
        raise VcorrError(f"{source}: missing key(s) {', '.join(missing)}")
    known = {*required, "description", "fusion", *METHOD_OPTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise VcorrError(f"{source}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(known))})")

    protocol = data["protocol"]
    if protocol not in PROTOCOL_PARAMS:
        raise VcorrError(f"{source}: protocol '{protocol}' is not one of {', '.join(PROTOCOL_PARAMS)}")
    features = feature_config(data["encoders"], data.get("fusion"), data["input"], source)

    benchmarks = data["benchmarks"]
    if not isinstance(benchmarks, dict) or not benchmarks:
        raise VcorrError(f"{source}: benchmarks must map benchmark ids to protocol settings")
    known_benchmarks = load_registry("benchmarks")
    method = Method(
        name=name,
        source=source,
        description=str(data.get("description", "")),
        features=features,
        protocol=protocol,
        benchmarks=copy.deepcopy(benchmarks),
        options={
            key: _check_option(key, data[key], source) if key in data else default(data)
            for key, (_, default) in METHOD_OPTIONS.items()
        },
    )
    for benchmark in benchmarks:
        if benchmark not in known_benchmarks:
            raise VcorrError(
                f"{source}: benchmarks.{benchmark} is not a benchmark of config/benchmarks.yaml "
                f"(known: {', '.join(known_benchmarks)})"
            )
        if not isinstance(benchmarks[benchmark], dict):
            raise VcorrError(f"{source}: benchmarks.{benchmark} must be a mapping of protocol parameters")
        method.settings_for(benchmark)  # validates its parameters and size
    return method


def _encoder_config(encoder: Any, where: str) -> EncoderConfig:
    from vcorr.models.weights import FORMATS

    if not isinstance(encoder, dict) or not isinstance(encoder.get("arch"), str) or not encoder["arch"]:
        raise VcorrError(f"{where}: needs an arch (an encoder name of vcorr.models)")
    unknown = sorted(set(encoder) - {"arch", "weights", "seed"})
    if unknown:
        raise VcorrError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: arch, weights, seed)")
    weights = encoder.get("weights")
    if weights is None:
        if not _is_int(encoder.get("seed")):
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


def _check_option(key: str, value: Any, where: str) -> Any:
    kind = METHOD_OPTIONS[key][0]
    if not isinstance(value, kind):
        raise VcorrError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    if key == "ties":
        # Imported here: this module stays free of torch for the workflow's DAG, which never
        # resolves method options.
        from vcorr.propagation.affinity import TIE_RULES

        if value not in TIE_RULES:
            raise VcorrError(f"{where}: ties must be one of {', '.join(TIE_RULES)}, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_size(size: Any, where: str) -> None | tuple[int, int] | dict[str, int]:
    if size is None:
        return None
    if isinstance(size, dict) and list(size) == ["short_side"] and _is_int(size["short_side"]) and size["short_side"] > 0:
        return dict(size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size):
        return (int(size[0]), int(size[1]))
    raise VcorrError(f"{where}.size: must be null, [H, W] or {{short_side: N}} with positive integers, got {size!r}")


def _check_params(protocol: str, params: dict[str, Any], where: str) -> None:
    expected = PROTOCOL_PARAMS[protocol]
    missing = [key for key in expected if key not in params]
    if missing:
        raise VcorrError(f"{where}: missing {protocol} parameter(s) {', '.join(missing)}")
    unknown = sorted(set(params) - set(expected))
    if unknown:
        raise VcorrError(f"{where}: unknown {protocol} parameter(s) {', '.join(unknown)} (allowed: {', '.join(expected)})")
    for key, kind in expected.items():
        value = params[key]
        is_bool = isinstance(value, bool)
        if (kind is bool) != is_bool or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "number"
            raise VcorrError(f"{where}.{key}: expected {names}, got {value!r}")
        if not is_bool and value <= 0:
            raise VcorrError(f"{where}.{key}: must be positive, got {value!r}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings to a dict; values are parsed as YAML (3, 0.05, true, null, [320, 320])."""
    overrides = {}
    for item in items:
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise VcorrError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise VcorrError(f"--set {item!r}: value is not valid YAML ({error})") from None
    return overrides
