"""The package's import graph: no circle, and layers that look down only.

From the top: the CLI; the report (reads finished outputs); evaluation and training side by
side, meeting only through what lies below them; features and propagation; models, data and
metrics; the foundation (errors, config, io, provenance, device). An import counts wherever it
is written (function-level ones included) and so does a module named as a string (lazy exports,
registries): `vcorr.provenance.direct_imports`.
"""

from __future__ import annotations

import pytest

from vcorr.provenance import direct_imports, package_modules

# Layer of each top-level part of the package, top first. Parts on one layer may not import each
# other unless they share a group name (the foundation's modules use each other freely).
LAYERS: list[dict[str, str]] = [
    {"vcorr.__main__": "cli", "vcorr.cli": "cli", "vcorr.commands": "cli"},
    {"vcorr.report": "report"},
    {"vcorr.evaluation": "evaluation", "vcorr.train": "train"},
    {"vcorr.features": "features", "vcorr.propagation": "propagation"},
    {"vcorr.models": "models", "vcorr.data": "data", "vcorr.metrics": "metrics"},
    {name: "foundation" for name in ("vcorr", "vcorr.errors", "vcorr.config", "vcorr.io", "vcorr.io_png",
                                     "vcorr.provenance", "vcorr.device")},
]
# Lower parts a middle layer may use beside its own layer's: metrics read labels with data's readers.
ALLOWED_SIDEWAYS = {("metrics", "data"), ("propagation", "metrics"), ("propagation", "data")}


def part_of(module: str) -> tuple[int, str]:
    """(layer index, group) of a module: its longest listed prefix."""
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix, group in layer.items():
            if module == prefix or (module.startswith(prefix + ".") and prefix != "vcorr"):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index, group)
    if best is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py (add it to LAYERS)")
    return best[1], best[2]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of `graph` (strongly connected components of more than one module, or a
    module importing itself), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b: why` for every import that looks up, or across to a part of its layer it may not use."""
    violations = []
    for source, targets in sorted(graph.items()):
        source_layer, source_group = part_of(source)
        for target in sorted(targets):
            target_layer, target_group = part_of(target)
            if target_layer < source_layer:
                violations.append(f"{source} -> {target}: {source_group} imports {target_group}, a layer above it")
            elif (target_layer == source_layer and target_group != source_group
                  and (source_group, target_group) not in ALLOWED_SIDEWAYS):
                violations.append(f"{source} -> {target}: {source_group} and {target_group} sit side by side")
    return violations


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {module: direct_imports(module) for module in package_modules()}


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_every_import_looks_down(graph):
    assert layer_violations(graph) == []


def test_training_evaluation_and_report_meet_only_below(graph):
    crossing = [(source, target) for source, targets in graph.items() for target in targets
                if (source.startswith("vcorr.train") and target.startswith(("vcorr.evaluation", "vcorr.report")))
                or (source.startswith("vcorr.evaluation") and target.startswith(("vcorr.train", "vcorr.report")))]
    assert crossing == []


@pytest.mark.parametrize(("edge", "expected"), [
    (("vcorr.train.loop", "vcorr.evaluation.pipeline"), "train and evaluation sit side by side"),
    (("vcorr.train.loop", "vcorr.report.results"), "train imports report, a layer above it"),
    (("vcorr.evaluation.pipeline", "vcorr.report.results"), "evaluation imports report, a layer above it"),
    (("vcorr.models.encoders", "vcorr.features"), "models imports features, a layer above it"),
])
def test_the_checks_catch_a_wrong_import(graph, edge, expected):
    source, target = edge
    changed = {**graph, source: graph[source] | {target}}
    assert any(expected in violation for violation in layer_violations(changed))


def test_the_checks_catch_a_circle(graph):
    changed = {**graph, "vcorr.config": graph["vcorr.config"] | {"vcorr.data.readers"}}
    assert ["vcorr.config", "vcorr.data.readers"] in circles(changed)


def test_function_level_and_string_imports_are_edges():
    # pipeline imports the propagators inside a function; the propagation package names its
    # modules as strings (lazy exports).
    assert "vcorr.propagation" in direct_imports("vcorr.evaluation.pipeline")
    assert "vcorr.propagation.stream" in direct_imports("vcorr.propagation")
