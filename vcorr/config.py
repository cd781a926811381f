"""The YAML registries under `config/` (datasets, benchmarks, methods), found one documented way.

Lookup order for the config folder: `$VCORR_CONFIG_DIR`, then `./config` when the current folder
holds one (a checkout, where Snakemake runs), then the `config/` of the checkout this package was
installed from (editable installs).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml

from vcorr.errors import VcorrError

_CHECKOUT_CONFIG = Path(__file__).resolve().parents[1] / "config"


def config_dir() -> Path:
    for candidate in (os.environ.get("VCORR_CONFIG_DIR"), "config", _CHECKOUT_CONFIG):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise VcorrError(
        "no config folder found: set VCORR_CONFIG_DIR or run from a vcorr checkout "
        f"(looked in $VCORR_CONFIG_DIR, ./config and {_CHECKOUT_CONFIG})"
    )


def read_yaml(path: Path, what: str):
    """A YAML file's content; a missing file or bad YAML is an error naming the file."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise VcorrError(f"{path}: {what} missing") from None
    except yaml.YAMLError as error:
        raise VcorrError(f"{path}: invalid YAML ({error})") from None


@lru_cache(maxsize=None)
def _load_yaml(path: Path) -> dict:
    data = read_yaml(path, "registry file")
    if not isinstance(data, dict):
        raise VcorrError(f"{path}: expected a mapping of names to entries")
    return data


def load_registry(name: str) -> dict:
    """`config/<name>.yaml` as a dict (e.g. "datasets", "benchmarks", "methods")."""
    return _load_yaml((config_dir() / f"{name}.yaml").resolve())


def registry_entry(name: str, key: str) -> dict:
    registry = load_registry(name)
    if key not in registry:
        known = ", ".join(sorted(registry))
        raise VcorrError(f"unknown {name[:-1] if name.endswith('s') else name} '{key}' (known: {known})")
    return registry[key]
