"""Training configs: a typed dataclass per method (`TrainConfig` holds the keys every method has),
read from `config/train/<name>.yaml` with `--set key=value` overrides and validated on load.

A method's `Config` subclasses `TrainConfig` and gives every hyper-parameter the original's value
as its default; the YAML names the method and overrides keys. An unknown key or a value of the
wrong type is refused with the key and the file, before any data is read.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any, ClassVar

from vcorr.errors import VcorrError

AMP_MODES = ("off", "fp16", "bf16")
SELECTIONS = ("last", "best")
# What a numeric key's value must satisfy, by the name a config's BOUNDS gives it.
RANGES: dict[str, Callable[[float], bool]] = {
    "> 0": lambda value: value > 0,
    ">= 0": lambda value: value >= 0,
    ">= 1": lambda value: value >= 1,
    "in [0, 1]": lambda value: 0 <= value <= 1,
    "in (0, 1]": lambda value: 0 < value <= 1,
}


@dataclass
class TrainConfig:
    method: str = ""
    epochs: int = 1
    batch_size: int = 128  # the GLOBAL batch: split evenly over DDP ranks
    workers: int = 4  # DataLoader worker processes (0 = load in the training process)
    seed: int = 42
    shuffle: bool = True
    drop_last: bool = False  # drop each epoch's last partial batch (of each rank); each method's Config gives its original's choice
    amp: bool | str = "off"  # "off", "fp16" (with GradScaler) or "bf16"; true = fp16. CUDA only: on CPU ignored with a warning
    checkpoint_every: int = 0  # steps between rolling checkpoints; 0 = at the end of each epoch only
    log_every: int = 10  # steps between metrics.csv / TensorBoard rows (means over the steps); 0 = epoch ends only
    max_steps: int | None = None  # stop after this many steps (demos, tests); schedules keep `epochs`
    image_size: int = 256
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP (batch statistics over all ranks); CUDA only: on CPU skipped with a warning
    # Validation while training (vcorr.evaluation.validation, on rank 0): every `eval_every` steps,
    # at step 0 and at the last step, the exported model is propagated and scored on
    # `eval_sequences` (None: all) of `eval_benchmark` (a benchmark of role validation) under
    # `eval_data_root`, with `eval_method` (the methods.yaml method evaluating this model; registry
    # weights it also reads under `eval_weights_root`). Scores go to metrics.csv / TensorBoard as
    # `val/<measure>`; it never changes the weights trained.
    eval_every: int = 0  # steps; 0 = no validation
    eval_benchmark: str | None = None
    eval_method: str | None = None
    eval_data_root: str | None = None
    eval_sequences: tuple[str, ...] | None = None
    eval_weights_root: str = "resources/data"
    # What --out holds: "last" (the weights at the end, as the papers report) or "best" (the
    # validated export with the highest score; it is also kept as <workdir>/best.pth either way).
    select: str = "last"

    # Keys that may differ between a checkpoint and the resumed run: they change how a run is
    # carried out or observed, not the sequence of weights it produces.
    RUNTIME_KEYS: ClassVar[frozenset[str]] = frozenset({
        "workers", "checkpoint_every", "log_every", "max_steps", "eval_every", "eval_benchmark", "eval_method",
        "eval_data_root", "eval_sequences", "eval_weights_root", "select"})
    # The range (a key of RANGES) of each numeric key; a method's Config adds its own keys', and
    # keys every method has (lr, weight_decay) are checked where a method defines them.
    BOUNDS: ClassVar[dict[str, str]] = {
        "epochs": ">= 1", "batch_size": ">= 1", "workers": ">= 0", "checkpoint_every": ">= 0",
        "log_every": ">= 0", "max_steps": ">= 1", "image_size": ">= 1", "lr": ">= 0", "weight_decay": ">= 0",
        "eval_every": ">= 0",
    }

    def __post_init__(self) -> None:
        # YAML `amp: true` means the original's fp16 autocast with a GradScaler.
        if self.amp is True:
            self.amp = "fp16"
        elif self.amp is False:
            self.amp = "off"
        if self.amp not in AMP_MODES:
            raise VcorrError(f"amp: {self.amp!r} is not one of {', '.join(AMP_MODES)} (or true/false)")
        bounds = {key: rule for cls in reversed(type(self).__mro__) for key, rule in vars(cls).get("BOUNDS", {}).items()}
        for key, rule in bounds.items():
            value = getattr(self, key, None)
            if value is not None and not RANGES[rule](value):
                raise VcorrError(f"{key}: must be {rule}, got {value!r}")
        if self.select not in SELECTIONS:
            raise VcorrError(f"select: {self.select!r} is not one of {', '.join(SELECTIONS)}")
        if self.eval_every:
            unset = [key for key in ("eval_benchmark", "eval_method", "eval_data_root") if not getattr(self, key)]
            if unset:
                raise VcorrError(f"eval_every: {self.eval_every} needs {', '.join(unset)}")
        elif self.select == "best":
            raise VcorrError("select: 'best' needs validation (eval_every > 0)")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _accepts(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Whether `value` fits `annotation`, and the value converted (int -> float, list -> tuple)."""
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            fits, converted = _accepts(value, option)
            if fits:
                return True, converted
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
        return fits, float(value) if fits else value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (tuple, list) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(annotation)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return False, value
            items = [_accepts(item, arg) for item, arg in zip(value, args)]
        else:
            items = [_accepts(item, args[0] if args else Any) for item in value]
        if not all(fits for fits, _ in items):
            return False, value
        converted = [item for _, item in items]
        return True, tuple(converted) if (origin or annotation) is tuple else converted
    if origin is dict or annotation is dict:
        return isinstance(value, dict), value
    return isinstance(value, annotation), value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def build_config(config_class: type[TrainConfig], values: dict[str, Any], source: str) -> TrainConfig:
    """`config_class(**values)` after checking every key and type; errors name `source`."""
    hints = typing.get_type_hints(config_class)
    fields = {field.name for field in dataclasses.fields(config_class)}
    checked = {}
    for key, value in values.items():
        if key not in fields:
            raise VcorrError(f"{source}: unknown key '{key}' for method '{values.get('method')}' "
                             f"(known: {', '.join(sorted(fields))})")
        fits, checked[key] = _accepts(value, hints[key])
        if not fits:
            raise VcorrError(f"{source}: {key}: must be {_type_name(hints[key])}, got {value!r}")
    try:
        return config_class(**checked)
    except VcorrError as error:
        raise VcorrError(f"{source}: {error}") from None
