"""What the methods' authors published (config/published.yaml): their numbers, each with its
source, their predicted masks, and the tables that set vcorr's results beside the numbers
(`results/tables/<name>.csv`, written by `vcorr.report.tables`).

A table names its benchmarks, its methods (a list, `released`: every method of methods.yaml
whose weights are downloads, or `all`) and its protocols (`own`: each method under its own, as
its paper evaluated it; `all`: under every protocol, as the cross-protocol table). Its rows are
the cells of `vcorr.evaluation.cross_protocol.cross_protocol_cells` on the benchmarks scored
locally, one own-protocol row per method on a benchmark an evaluation server scores (listed, not
evaluated), and the rows of methods published.yaml lists without weights (`listed: <reason>`).

Works on the raw registries (plain dicts), so that the workflow plans exactly the results the
table reads. The registry is checked here, by the workflow when the DAG is built
(workflow/schemas/published.schema.yaml, then `check_published`) and by `vcorr report table`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vcorr.errors import VcorrError
from vcorr.evaluation.cross_protocol import OWN_SETTINGS, Cell, cross_protocol_cells
from vcorr.propagation.parameters import PROTOCOL_PARAMS
from vcorr.report.results import HEADLINES

SERVER_NOTE = "scored by an evaluation server: results/{benchmark}/{method}.json says where to upload the archive"


@dataclass(frozen=True)
class Number:
    """A published number set: (method, benchmark, protocol) -> {metric: value in percent}."""

    method: str
    benchmark: str
    protocol: str
    values: dict[str, float]
    source: str  # a key of published.yaml `sources`


def own_protocol(name: str, published: dict[str, Any], methods: dict[str, Any]) -> str:
    """The protocol a method's own numbers come from: its methods.yaml protocol, or for a method
    published.yaml lists without weights, the protocol given there."""
    if name in methods:
        return methods[name]["protocol"]
    return published["methods"][name]["protocol"]


def numbers(published: dict[str, Any], methods: dict[str, Any]) -> list[Number]:
    """Every published number set of the registry, its protocol defaulting to the method's own."""
    found = []
    for name, entry in (published.get("methods") or {}).items():
        for item in entry.get("numbers") or []:
            found.append(Number(name, item["benchmark"], item.get("protocol") or own_protocol(name, published, methods),
                                dict(item["values"]), item["source"]))
    return found


def check_published(published: dict[str, Any], methods: dict[str, Any], benchmarks: dict[str, Any],
                    datasets: dict[str, Any], where: str) -> None:
    """Names published.yaml takes from the other registries, and what the schema cannot say."""
    sources = published.get("sources") or {}
    entries = published.get("methods") or {}
    for name, entry in entries.items():
        key = f"{where}: methods.{name}"
        for protocol in [entry.get("protocol")] + [item.get("protocol") for item in entry.get("numbers") or []]:
            if protocol is not None and protocol not in PROTOCOL_PARAMS:
                raise VcorrError(f"{key}: protocol '{protocol}' is not one of {', '.join(PROTOCOL_PARAMS)}")
        if name in methods and ("listed" in entry or "protocol" in entry):
            raise VcorrError(f"{key}: a method of methods.yaml takes its protocol from there and is evaluated (no `listed`, no `protocol`)")
        if name not in methods and not ("listed" in entry and "protocol" in entry):
            raise VcorrError(f"{key}: not a method of methods.yaml; a method without public weights needs "
                             "`listed: <why it cannot be evaluated>` and the `protocol` of its numbers")
        for index, item in enumerate(entry.get("numbers") or []):
            where_item = f"{key}.numbers.{index}"
            if item["source"] not in sources:
                raise VcorrError(f"{where_item}.source: '{item['source']}' is not a source of published.yaml")
            if item["benchmark"] not in benchmarks:
                raise VcorrError(f"{where_item}.benchmark: '{item['benchmark']}' is not a benchmark of benchmarks.yaml")
            # A locally scored benchmark's numbers use its scorer's headline names (a server's: any).
            metrics = HEADLINES.get(benchmarks[item["benchmark"]]["scorer"])
            unknown = sorted(set(item["values"]) - set(metrics)) if metrics else []
            if unknown:
                raise VcorrError(f"{where_item}.values.{unknown[0]}: not a metric of {item['benchmark']}'s scorer "
                                 f"({', '.join(metrics)})")
        for benchmark, masks in (entry.get("masks") or {}).items():
            if name not in methods or benchmark not in methods[name]["benchmarks"]:
                raise VcorrError(f"{key}.masks.{benchmark}: method {name} has no settings for {benchmark} in methods.yaml "
                                 "(its predictions are compared with the masks)")
            if masks["id"] not in datasets:
                raise VcorrError(f"{key}.masks.{benchmark}.id: '{masks['id']}' is not in datasets.yaml")
    for table, entry in (published.get("tables") or {}).items():
        key = f"{where}: tables.{table}"
        if entry.get("source") is not None and entry["source"] not in sources:
            raise VcorrError(f"{key}.source: '{entry['source']}' is not a source of published.yaml")
        for benchmark in entry["benchmarks"]:
            if benchmark not in benchmarks:
                raise VcorrError(f"{key}.benchmarks: '{benchmark}' is not a benchmark of benchmarks.yaml")
        if isinstance(entry["methods"], list):
            for method in entry["methods"]:
                if method not in methods and method not in entries:
                    raise VcorrError(f"{key}.methods: '{method}' is neither a method of methods.yaml nor listed in published.yaml")


def table_methods(table: dict[str, Any], published: dict[str, Any], methods: dict[str, Any]) -> list[str]:
    """The table's methods: its list; `released`: every method of methods.yaml that reads no file the
    workflow produces and has settings for one of the table's benchmarks, then every listed one;
    `all`: the same without the first condition."""
    if isinstance(table["methods"], list):
        return list(table["methods"])
    released = table["methods"] == "released"
    chosen = [
        name for name, entry in methods.items()
        if set(entry["benchmarks"]) & set(table["benchmarks"])
        and not (released and any("path" in (encoder.get("weights") or {}) for encoder in entry["encoders"]))
    ]
    return chosen + [name for name, entry in (published.get("methods") or {}).items() if "listed" in entry]


def table_cells(name: str, published: dict[str, Any], methods: dict[str, Any], protocols: dict[str, Any],
                benchmarks: dict[str, Any]) -> list[Cell]:
    """The rows of table `name`, benchmark-major (see the module docstring)."""
    tables = published.get("tables") or {}
    if name not in tables:
        raise VcorrError(f"unknown table '{name}' (tables of published.yaml: {', '.join(tables) or 'none'})")
    table = tables[name]
    chosen = table_methods(table, published, methods)
    listed = [method for method in chosen if method not in methods]
    evaluated = [method for method in chosen if method in methods]
    tasks = {benchmark: entry["task"] for benchmark, entry in benchmarks.items()}
    cells = []
    for benchmark in table["benchmarks"]:
        if benchmarks[benchmark]["scorer"] == "server":
            cells += [
                Cell(method, methods[method]["protocol"], benchmark, None, OWN_SETTINGS,
                     SERVER_NOTE.format(benchmark=benchmark, method=method))
                for method in evaluated if benchmark in methods[method]["benchmarks"]
            ]
        else:
            found = cross_protocol_cells(evaluated, [benchmark], methods, protocols, tasks)
            cells += [cell for cell in found if table["protocols"] == "all" or cell.protocol == methods[cell.method]["protocol"]]
        for method in listed:
            entry = published["methods"][method]
            published_on = {item["benchmark"] for item in entry.get("numbers") or []}
            if not published_on or benchmark in published_on:
                cells.append(Cell(method, entry["protocol"], benchmark, None, "", entry["listed"]))
    return cells


def masks_entry(published: dict[str, Any], method: str, benchmark: str) -> dict[str, Any]:
    """published.yaml's entry of the authors' masks of `method` on `benchmark` ({id, root})."""
    masks = ((published.get("methods") or {}).get(method) or {}).get("masks") or {}
    if benchmark not in masks:
        having = [f"{name} on {bench}" for name, entry in (published.get("methods") or {}).items()
                  for bench in (entry.get("masks") or {})]
        raise VcorrError(f"no released masks of {method} on {benchmark} in published.yaml (masks are known for: "
                         f"{', '.join(having) or 'none'})")
    return masks[benchmark]

