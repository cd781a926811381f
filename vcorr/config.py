"""The YAML registries under `config/` (datasets, benchmarks, methods, ...), found one documented
way, and the one way vcorr reads a YAML value: registries, method and training files, `--set`.

Where registries are looked up: the folders of `$VCORR_CONFIG_DIR` (one folder, or several joined
by `os.pathsep`, searched in order for each file: the workflow sets a project's own folder first and
vcorr's `config/` after it, so that a project overrides any registry and inherits the rest), else
`./config` when the current folder holds one (a checkout, where Snakemake runs), else the
`config/` of the checkout this package was installed from (editable installs).

Numbers as people write them: YAML 1.1 (PyYAML) reads `1e-4`, `1e30` or `3E-5` as strings, since
its floats need a dot and a signed exponent. vcorr's loader reads every decimal number with an
exponent as a float (YAML 1.2's rule), everywhere vcorr reads YAML.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from vcorr.errors import VcorrError

_CHECKOUT_CONFIG = Path(__file__).resolve().parents[1] / "config"
# Decimal numbers with an exponent that YAML 1.1's float pattern misses (no dot, or no sign).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


def _with_exponent_floats(base: type) -> type:
    loader = type(f"Vcorr{base.__name__}", (base,), {})
    loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return loader


# libyaml's loader when present (the workflow reads the registries on every invocation).
_LOADER = _with_exponent_floats(getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_yaml_text(text: str) -> Any:
    """YAML text as vcorr reads it (exponent floats included); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_LOADER)


def read_yaml(path: Path, what: str):
    """A YAML file's content; a missing file or bad YAML is an error naming the file."""
    try:
        return load_yaml_text(Path(path).read_text())
    except FileNotFoundError:
        raise VcorrError(f"{path}: {what} missing") from None
    except yaml.YAMLError as error:
        raise VcorrError(f"{path}: invalid YAML ({error})") from None


def with_exponent_floats(value: Any) -> Any:
    """`value` with every string that vcorr's loader reads as a float made one (for values read
    by another YAML reader, e.g. Snakemake's config); containers are converted item by item."""
    if isinstance(value, dict):
        return {key: with_exponent_floats(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_exponent_floats(item) for item in value]
    if isinstance(value, str) and _EXPONENT_FLOAT.match(value):
        return float(value.replace("_", ""))
    return value


def is_int(value: Any) -> bool:
    """An integer that is not a bool (YAML `yes` would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings to a dict; values are parsed as YAML (3, 0.05, 1e-4, true, null, [320, 320])."""
    overrides = {}
    for item in items:
        key, separator, text = item.partition("=")
        key = key.strip()
        if not separator or not key:
            raise VcorrError(f"--set {item!r}: expected KEY=VALUE")
        try:
            overrides[key] = load_yaml_text(text)
        except yaml.YAMLError as error:
            raise VcorrError(f"--set {item!r}: value is not valid YAML ({error})") from None
    return overrides


def schema_error(data: Any, schema_file: Path) -> str | None:
    """`<key path>: <what is wrong>` for the most relevant way `data` breaks the JSON schema in
    `schema_file` (YAML), or None when it conforms: how the workflow checks registries and config."""
    import jsonschema

    schema = read_yaml(schema_file, "JSON schema")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is None:
        return None
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    return f"{key}: {error.message}"


def config_dirs() -> list[Path]:
    """The registry folders, in lookup order (module docstring)."""
    listed = [Path(item) for item in os.environ.get("VCORR_CONFIG_DIR", "").split(os.pathsep) if item]
    if listed:
        missing = [str(folder) for folder in listed if not folder.is_dir()]
        if missing:
            raise VcorrError(f"$VCORR_CONFIG_DIR: {', '.join(missing)}: no such folder")
        return listed
    for candidate in (Path("config"), _CHECKOUT_CONFIG):
        if candidate.is_dir():
            return [candidate]
    raise VcorrError(
        "no config folder found: set VCORR_CONFIG_DIR or run from a vcorr checkout "
        f"(looked in $VCORR_CONFIG_DIR, ./config and {_CHECKOUT_CONFIG})"
    )


def find_config_file(relative: str | os.PathLike, folders: list[Path]) -> Path | None:
    """`relative` (a registry such as methods.yaml, or a list of lists/) in the first of `folders`
    that holds it, else None: the one lookup of the library and of the workflow's DAG."""
    for folder in folders:
        if (Path(folder) / relative).is_file():
            return Path(folder) / relative
    return None


def config_file(relative: str | os.PathLike, what: str = "registry file") -> Path:
    """`relative` in the registry folders; an error names every folder looked in when none has it."""
    folders = config_dirs()
    found = find_config_file(relative, folders)
    if found is None:
        raise VcorrError(f"{relative}: {what} missing (looked in {', '.join(str(folder) for folder in folders)})")
    return found


def optional_config_file(relative: str | os.PathLike) -> Path | None:
    """`relative` in the registry folders, or None (protocols.yaml: no file, no cross-protocol variants)."""
    return find_config_file(relative, config_dirs())


@lru_cache(maxsize=None)
def _load_yaml(path: Path) -> dict:
    data = read_yaml(path, "registry file")
    if not isinstance(data, dict):
        raise VcorrError(f"{path}: expected a mapping of names to entries")
    return data


def load_registry(name: str) -> dict:
    """`<name>.yaml` of the registry folders as a dict (e.g. "datasets", "benchmarks", "methods")."""
    return _load_yaml(config_file(f"{name}.yaml").resolve())


def registry_entry(name: str, key: str) -> dict:
    registry = load_registry(name)
    if key not in registry:
        known = ", ".join(sorted(registry))
        raise VcorrError(f"unknown {name[:-1] if name.endswith('s') else name} '{key}' (known: {known})")
    return registry[key]
