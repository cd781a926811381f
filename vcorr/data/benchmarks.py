"""Typed access to config/benchmarks.yaml, the one home of every benchmark fact.

The code dispatches on these fields (layout kind, task, object counting, late objects, the
archive layout of a server): a benchmark whose layout vcorr knows is added by a registry edit.
The key reference is the header of config/benchmarks.yaml; workflow/schemas/benchmarks.schema.yaml
checks it when the DAG is built.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from vcorr.config import config_file, load_registry, registry_entry
from vcorr.data.readers import preferred_list
from vcorr.errors import VcorrError

LAYOUTS = ("davis", "ytvos", "jhmdb", "vip")
TASKS = ("vos", "vip", "jhmdb")
SCORERS = ("davis", "jhmdb", "vip", "server")
OBJECT_COUNTINGS = ("first", "merged", "all")
# evaluation: a split whose scores are reported (a test set: never read while training);
# validation: held-out data that training may score itself on (`vcorr train --set eval_benchmark=`).
ROLES = ("evaluation", "validation")


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    dataset: str  # id in config/datasets.yaml whose extracted folder holds the data
    root: str  # subfolder of resources/data/<dataset>/ that is the official dataset root
    layout: str  # LAYOUTS: how vcorr.data.layouts enumerates sequences, frames and labels
    task: str  # TASKS: which label adapter and output writer propagation uses
    scorer: str  # SCORERS
    subset: str
    year: int | None = None  # DAVIS: ImageSets/<year>/<subset>.txt; 2016 merges the objects
    split_list: str | None = None  # a list shipped in config/ (JHMDB's split, VIP's fallback)
    video_list: str | None = None  # a list inside the root, preferred to split_list when present
    objects: str | None = None  # OBJECT_COUNTINGS: how `vcorr data index` counts objects
    late_objects: bool = False  # objects may first appear after frame 0 (YouTube-VOS)
    all_frames: str | None = None  # folder beside the root with every raw frame, walked when present
    server: dict | None = None  # scorer server: {url, archive, archive_prefix}
    role: str = "evaluation"  # ROLES
    settings_from: str | None = None  # the benchmark whose method settings (methods.yaml) apply here

    @property
    def settings_name(self) -> str:
        """The benchmark a method's settings are looked up under for this one."""
        return self.settings_from or self.name

    @property
    def archive_prefix(self) -> str:
        if not self.server or "archive_prefix" not in self.server:
            raise VcorrError(f"config/benchmarks.yaml: {self.name}: not scored by a server (no server.archive_prefix)")
        return self.server["archive_prefix"]

    def split_list_path(self) -> Path:
        if not self.split_list:
            raise VcorrError(f"config/benchmarks.yaml: {self.name}: has no split_list")
        return config_file(self.split_list, f"split_list of benchmark {self.name}, shipped in config/")

    def sequence_list(self, root: Path) -> Path:
        """The list naming the sequences: `<root>/<video_list>` when present, else the shipped split_list."""
        return preferred_list(root, self.video_list, self.split_list)


_KEYS = {item.name for item in fields(Benchmark)} - {"name"}
_REQUIRED = {item.name for item in fields(Benchmark) if item.default is MISSING} - {"name"}
_DEFAULTS = {item.name: item.default for item in fields(Benchmark) if item.default is not MISSING}


def benchmark(name: str) -> Benchmark:
    """The registry entry `name`, with its keys checked (the schema says the same for the DAG)."""
    entry = registry_entry("benchmarks", name)
    if not isinstance(entry, dict):
        raise VcorrError(f"config/benchmarks.yaml: {name}: expected a mapping")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise VcorrError(f"config/benchmarks.yaml: {name}: unknown key(s) {', '.join(unknown)}")
    for key, allowed in (("layout", LAYOUTS), ("task", TASKS), ("scorer", SCORERS), ("role", ROLES)):
        if entry.get(key, _DEFAULTS.get(key)) not in allowed:
            raise VcorrError(f"config/benchmarks.yaml: {name}.{key}: {entry.get(key)!r} is not one of {', '.join(allowed)}")
    missing = sorted(_REQUIRED - set(entry))
    if missing:
        raise VcorrError(f"config/benchmarks.yaml: {name}: missing key(s) {', '.join(missing)}")
    return Benchmark(name=name, **entry)


def benchmark_names() -> list[str]:
    return list(load_registry("benchmarks"))


def server_benchmarks() -> list[str]:
    return [name for name in benchmark_names() if load_registry("benchmarks")[name].get("scorer") == "server"]
