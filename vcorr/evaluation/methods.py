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

from vcorr.config import config_file, is_int, load_registry, optional_config_file, parse_overrides, read_yaml
from vcorr.errors import VcorrError
from vcorr.evaluation.cross_protocol import check_protocols, split_name, variant_entry
from vcorr.models.config import EncoderConfig, FeatureConfig, feature_config
from vcorr.propagation.parameters import (
    PROTOCOL_DEFAULTS,
    PROTOCOL_PARAMS,
    PROTOCOL_SIZES,
    PROTOCOL_TASKS,
    TIE_RULES,
    ZERO_ALLOWED,
)

# Method options: switches of the method's pipeline (not of its protocol), set in the method's
# entry and overridable per run with `--set`. Each maps to (type, default for a method).
# zero_image_bn_update: HVC's post-load BN step (vcorr.models.hvc_bn); on by default for methods
# that use HVC's test-time fusion, i.e. HVC's published pipeline (models/encoder.py make_encoder).
# ties: whose torch.topk choice among exact affinity ties propagation reproduces, the originals'
# run on the CPU or on a GPU (vcorr.propagation.parameters.TIE_RULES).
METHOD_OPTIONS: dict[str, tuple[type, Any]] = {
    "zero_image_bn_update": (bool, lambda data: data.get("fusion") == "hvc"),
    "ties": (str, lambda data: "cpu"),
}


@dataclass(frozen=True)
class BenchmarkSettings:
    """What propagation needs for one (method, benchmark) pair."""

    protocol: str
    params: dict[str, Any]  # keyword arguments of vcorr.propagation.propagate
    # None, (H, W), {"short_side": N} or {"short_side": N, "long_side_floor": M}
    size: None | tuple[int, int] | dict[str, int]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # METHOD_OPTIONS, resolved

    def input_size(self, height: int, width: int, multiple: int = 1) -> tuple[int, int]:
        """The (H, W) the encoder sees for a frame of `height` x `width`: the size rule, then each
        side floored to a multiple of `multiple` (a ViT's patch: its grid then covers the frame)."""
        if self.size is None:
            size = height, width
        elif isinstance(self.size, dict) and "long_side_floor" in self.size:
            # DINO's read_frame: the short side N exactly, the long side floored to a multiple of
            # M; a square frame takes the landscape branch (N high, floor(N) wide).
            short, floor = self.size["short_side"], self.size["long_side_floor"]
            if height > width:
                size = int(short * height / width // floor * floor), short
            else:
                size = short, int(short * width / height // floor * floor)
        elif isinstance(self.size, dict):
            scale = self.size["short_side"] / min(height, width)
            # Round half up like mmcv's rescale_size (Spa-then-Temp's Resize with keep_ratio).
            size = int(height * scale + 0.5), int(width * scale + 0.5)
        else:
            size = self.size
        return size[0] // multiple * multiple, size[1] // multiple * multiple

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
        size = _check_size(merged.pop("size", PROTOCOL_SIZES.get(protocol)), where)
        _check_params(protocol, merged, where)
    except VcorrError as error:
        if not overrides:
            raise
        raise VcorrError(f"{error} (after {applied})") from None
    return BenchmarkSettings(protocol, merged, size, options)


def load_method(name_or_file: str | Path) -> Method:
    """A method by registry name, or from a YAML file holding one method's keys."""
    text = str(name_or_file)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise VcorrError(f"{path}: method config file missing")
        data = read_yaml(path, "method config file")
        name = path.stem
        # A copy of a registry entry (`<name>: {encoders: ...}`) is accepted as well.
        if isinstance(data, dict) and len(data) == 1 and "encoders" not in data:
            (name, data), = data.items()
        return validate_method(name, data, str(path))
    registry, registry_file = load_registry("methods"), config_file("methods.yaml")
    if text in registry:
        return validate_method(text, registry[text], f"{registry_file} [{text}]")
    base, protocol = split_name(text)
    if protocol is not None:
        return _load_variant(text, base, protocol, registry)
    raise VcorrError(f"unknown method '{text}': not a file and not in {registry_file} (known: {', '.join(registry)})")


def _load_variant(name: str, base: str, protocol: str, registry: dict[str, Any]) -> Method:
    """`<method>@<protocol>` (vcorr.evaluation.cross_protocol), checked like a registry entry."""
    protocols_file = optional_config_file("protocols.yaml")
    if base not in registry:
        raise VcorrError(f"unknown method '{base}' in '{name}': not in {config_file('methods.yaml')} (known: {', '.join(registry)})")
    if protocol not in PROTOCOL_PARAMS:
        raise VcorrError(f"'{name}': protocol '{protocol}' is not one of {', '.join(PROTOCOL_PARAMS)}")
    protocols = load_registry("protocols") if protocols_file else {}
    protocols_file = protocols_file or "protocols.yaml"
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
        task = known_benchmarks[benchmark]["task"]
        if task not in PROTOCOL_TASKS[protocol]:
            raise VcorrError(f"{source}: benchmarks.{benchmark}: protocol {protocol} defines no {task} task "
                             f"(its tasks: {', '.join(PROTOCOL_TASKS[protocol])}; vcorr.propagation.parameters)")
        method.settings_for(benchmark)  # validates its parameters and size
    return method


def _check_option(key: str, value: Any, where: str) -> Any:
    kind = METHOD_OPTIONS[key][0]
    if not isinstance(value, kind):
        raise VcorrError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    if key == "ties" and value not in TIE_RULES:
        raise VcorrError(f"{where}: ties must be one of {', '.join(TIE_RULES)}, got {value!r}")
    return value


def _check_size(size: Any, where: str) -> None | tuple[int, int] | dict[str, int]:
    if size is None:
        return None
    if (isinstance(size, dict) and sorted(size) in (["short_side"], ["long_side_floor", "short_side"])
            and all(is_int(v) and v > 0 for v in size.values())):
        return dict(size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(v) and v > 0 for v in size):
        return (int(size[0]), int(size[1]))
    raise VcorrError(f"{where}.size: must be null, [H, W], {{short_side: N}} or {{short_side: N, long_side_floor: M}} "
                     f"with positive integers, got {size!r}")


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
        if not is_bool and value <= 0 and not (value == 0 and key in ZERO_ALLOWED.get(protocol, ())):
            raise VcorrError(f"{where}.{key}: must be positive, got {value!r}")
