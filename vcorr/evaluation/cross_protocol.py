"""Every method under every propagation protocol: what the representation brings, separated from
what the protocol brings.

A method evaluated under a protocol other than its own is named `<method>@<protocol>` (e.g.
`hvc_release_coco@stt`). It keeps its features -- encoders, fusion, input normalisation and
method options -- and takes, per benchmark, that protocol's settings (parameters and input size)
from the protocol's reference methods: config/protocols.yaml `settings_from`, the first listed
method that has settings for the benchmark. Under its own protocol a method is itself, with its
published settings. The label path follows the protocol (vcorr.evaluation.pipeline), so
`hvc_release_coco@stt` is HVC's features through Spa-then-Temp's whole test pipeline.

Works on the raw registries (plain dicts) so that the workflow, which reads them with yaml only,
plans exactly the variants `vcorr propagate --method-config <method>@<protocol>` runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

from vcorr.errors import VcorrError
from vcorr.propagation.parameters import PROTOCOL_PARAMS, PROTOCOL_TASKS

SEPARATOR = "@"
# Column `settings` of a cell evaluated with the method's own settings.
OWN_SETTINGS = "own"


def split_name(name: str) -> tuple[str, str | None]:
    """`<method>@<protocol>` -> (method, protocol); a plain method name -> (name, None)."""
    base, separator, protocol = name.partition(SEPARATOR)
    return base, (protocol if separator else None)


def check_protocols(protocols: dict[str, Any], methods: dict[str, Any], where: str) -> None:
    """Every reference method exists and uses the protocol it defines the settings of."""
    for protocol, entry in protocols.items():
        for index, reference in enumerate(entry.get("settings_from") or []):
            if reference not in methods:
                raise VcorrError(f"{where}: {protocol}.settings_from.{index}: '{reference}' is not a method of methods.yaml")
            if methods[reference]["protocol"] != protocol:
                raise VcorrError(
                    f"{where}: {protocol}.settings_from.{index}: method '{reference}' uses protocol "
                    f"'{methods[reference]['protocol']}', not '{protocol}'"
                )


def reference_settings(protocol: str, methods: dict[str, Any], protocols: dict[str, Any]) -> dict[str, tuple[str, dict]]:
    """{benchmark: (reference method, its settings entry)} for `protocol`, first reference first."""
    found: dict[str, tuple[str, dict]] = {}
    for reference in (protocols.get(protocol) or {}).get("settings_from") or []:
        for benchmark, entry in methods[reference]["benchmarks"].items():
            found.setdefault(benchmark, (reference, entry))
    return found


def variant_entry(name: str, methods: dict[str, Any], protocols: dict[str, Any]) -> dict[str, Any] | None:
    """The registry entry of `<method>@<protocol>`, or None when `name` is no such variant (an
    unknown method or protocol, the method's own protocol, or a protocol without references)."""
    base, protocol = split_name(name)
    if protocol is None or base not in methods or protocol not in protocols:
        return None
    method = methods[base]
    settings = reference_settings(protocol, methods, protocols)
    if protocol == method["protocol"] or not settings:
        return None
    references = ", ".join(dict.fromkeys(reference for reference, _ in settings.values()))
    entry = copy.deepcopy(method)
    entry["protocol"] = protocol
    entry["description"] = f"{method.get('description', base)} -- under the {protocol} protocol with the settings of {references}"
    entry["benchmarks"] = {benchmark: copy.deepcopy(settings_entry) for benchmark, (_, settings_entry) in settings.items()}
    return entry


def protocol_variants(methods: dict[str, Any], protocols: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every `<method>@<protocol>` entry the registries define."""
    variants = {}
    for base in methods:
        for protocol in protocols:
            name = f"{base}{SEPARATOR}{protocol}"
            entry = variant_entry(name, methods, protocols)
            if entry is not None:
                variants[name] = entry
    return variants


@dataclass(frozen=True)
class Cell:
    """One (method, protocol, benchmark) of the table: evaluated as `evaluated_as` (a method name
    of the registry or a variant) with `settings` (own, or the reference method's), or not
    evaluated, with the reason in `note`."""

    method: str
    protocol: str
    benchmark: str
    evaluated_as: str | None
    settings: str
    note: str = ""


def cross_protocol_cells(
    methods: Sequence[str], benchmarks: Sequence[str], registry: dict[str, Any], protocols: dict[str, Any],
    tasks: dict[str, str] | None = None,
) -> list[Cell]:
    """Every (method, protocol, benchmark) cell, benchmark-major, then method, then protocol.
    `tasks`: {benchmark: task} (config/benchmarks.yaml), so that a cell of a task its protocol
    does not define says so (PROTOCOL_TASKS) rather than that no reference has settings."""
    references = {protocol: reference_settings(protocol, registry, protocols) for protocol in PROTOCOL_PARAMS}
    cells = []
    for benchmark in benchmarks:
        task = (tasks or {}).get(benchmark)
        for base in methods:
            own = registry[base]
            for protocol in PROTOCOL_PARAMS:
                if task is not None and task not in PROTOCOL_TASKS[protocol]:
                    cells.append(Cell(
                        base, protocol, benchmark, None, "",
                        f"protocol {protocol} defines no {task} task (vcorr.propagation.parameters.PROTOCOL_TASKS)",
                    ))  # fmt: skip
                    continue
                if protocol == own["protocol"]:
                    supported = benchmark in own["benchmarks"]
                    cells.append(Cell(
                        base, protocol, benchmark, base if supported else None, OWN_SETTINGS,
                        "" if supported else f"method {base} has no settings for {benchmark} in methods.yaml",
                    ))  # fmt: skip
                    continue
                settings = references[protocol]
                if benchmark in settings:
                    cells.append(Cell(base, protocol, benchmark, f"{base}{SEPARATOR}{protocol}", settings[benchmark][0]))
                else:
                    cells.append(Cell(
                        base, protocol, benchmark, None, "",
                        f"no reference method of protocol {protocol} (protocols.yaml settings_from) has settings for {benchmark}",
                    ))  # fmt: skip
    return cells


def registry_cells(methods: Sequence[str], benchmarks: Sequence[str]) -> list[Cell]:
    """`cross_protocol_cells` from the registries of `vcorr.config.config_dirs()`, names checked."""
    from vcorr.config import config_file, load_registry, optional_config_file

    registry, known_benchmarks = load_registry("methods"), load_registry("benchmarks")
    protocols_file = optional_config_file("protocols.yaml")
    protocols = load_registry("protocols") if protocols_file else {}
    check_protocols(protocols, registry, str(protocols_file or "protocols.yaml"))
    for names, known, what in ((methods, registry, "methods"), (benchmarks, known_benchmarks, "benchmarks")):
        unknown = [name for name in names if name not in known]
        if unknown:
            raise VcorrError(f"unknown {what[:-1]} '{unknown[0]}' (not in {config_file(what + '.yaml')})")
    tasks = {name: entry["task"] for name, entry in known_benchmarks.items()}
    return cross_protocol_cells(methods, benchmarks, registry, protocols, tasks)
