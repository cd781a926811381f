"""Facts with one home: the tables in vcorr that the JSON schemas, the propagators, the pinned
environment and the profiles must agree with. Each test fails when one of them drifts."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from vcorr.evaluation.methods import METHOD_OPTIONS
from vcorr.models.config import FUSIONS, INPUTS
from vcorr.models.weights import FORMATS
from vcorr.propagation import PROTOCOLS
from vcorr.propagation.parameters import PROTOCOL_DEFAULTS, PROTOCOL_PARAMS, TIE_RULES, ZERO_ALLOWED

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "workflow" / "schemas"
# Keyword arguments of the propagators that are not protocol parameters: how a run computes, not
# what (speed, precision, the tie rule, the label path's output size, crw's label channels).
RUNTIME_ARGUMENTS = {"tile_size", "affinity_dtype", "ties", "output_size", "num_channels", "stride"}
# How the methods schema spells each parameter type of PROTOCOL_PARAMS.
SCHEMA_TYPES = {int: {"$ref": "#/$defs/positive_integer"}, (int, float): {"$ref": "#/$defs/positive_number"},
                bool: {"type": "boolean"}}


@pytest.fixture(scope="module")
def methods_schema() -> dict:
    return yaml.safe_load((SCHEMAS / "methods.schema.yaml").read_text())


def test_the_schema_has_each_protocols_parameters_with_their_types(methods_schema):
    definitions = methods_schema["$defs"]
    method = methods_schema["additionalProperties"]
    assert method["properties"]["protocol"]["enum"] == list(PROTOCOL_PARAMS)
    branches = {branch["if"]["properties"]["protocol"]["const"]: branch["then"] for branch in method["allOf"]}
    assert set(branches) == set(PROTOCOL_PARAMS)
    for protocol, params in PROTOCOL_PARAMS.items():
        settings = definitions[f"{protocol}_settings"]
        reference = branches[protocol]["properties"]["benchmarks"]["additionalProperties"]["$ref"]
        assert reference == f"#/$defs/{protocol}_settings"
        assert set(settings["properties"]) == {*params, "size"}, protocol
        assert set(settings["required"]) == set(params) - set(PROTOCOL_DEFAULTS[protocol]), protocol
        for name, kind in params.items():
            expected = {"type": "integer", "minimum": 0} if name in ZERO_ALLOWED.get(protocol, ()) else SCHEMA_TYPES[kind]
            assert settings["properties"][name] == expected, (protocol, name)
    protocols_schema = yaml.safe_load((SCHEMAS / "protocols.schema.yaml").read_text())
    assert protocols_schema["propertyNames"]["enum"] == list(PROTOCOL_PARAMS)


def test_each_propagator_takes_its_protocols_parameters(methods_schema):
    assert set(PROTOCOLS) == set(PROTOCOL_PARAMS)
    for protocol, propagator in PROTOCOLS.items():
        keywords = {name: parameter for name, parameter in inspect.signature(propagator).parameters.items()
                    if parameter.kind is inspect.Parameter.KEYWORD_ONLY}
        assert set(keywords) - RUNTIME_ARGUMENTS == set(PROTOCOL_PARAMS[protocol]), protocol
        for name, default in PROTOCOL_DEFAULTS[protocol].items():
            assert keywords[name].default == default, (protocol, name)


def test_the_schema_lists_the_formats_inputs_fusions_and_method_options(methods_schema):
    definitions, properties = methods_schema["$defs"], methods_schema["additionalProperties"]["properties"]
    assert definitions["format"]["enum"] == list(FORMATS)
    assert properties["input"]["enum"] == list(INPUTS)
    assert properties["fusion"]["enum"] == list(FUSIONS)
    assert properties["ties"]["enum"] == list(TIE_RULES)
    assert set(METHOD_OPTIONS) <= set(properties)


def test_every_runtime_dependency_is_pinned_in_the_conda_environment():
    import tomllib

    dependencies = [Requirement(text) for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    environment = yaml.safe_load((REPO / "envs" / "vcorr.yaml").read_text())
    pip = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict) and "pip" in item)
    pinned = {}
    for line in pip:
        name, _, version = line.partition("==")
        pinned[canonicalize_name(name)] = version
    for requirement in dependencies:
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"envs/vcorr.yaml lacks {requirement.name} (pyproject.toml: {requirement})"
        assert requirement.specifier.contains(pinned[name], prereleases=True), \
            f"envs/vcorr.yaml pins {name}=={pinned[name]}, outside pyproject.toml's {requirement}"


def workflow_rules() -> set[str]:
    sources = [REPO / "workflow" / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    return {name for source in sources for name in re.findall(r"^rule (\w+):", source.read_text(), flags=re.M)}


@pytest.mark.parametrize("profile", sorted((REPO / "profiles").glob("*/config.yaml")), ids=lambda path: path.parent.name)
def test_every_rule_a_profile_names_exists(profile):
    text = profile.read_text()
    named = set((yaml.safe_load(text) or {}).get("set-resources") or {})
    # Rules offered as commented templates under set-resources count too: users uncomment them.
    block = re.search(r"^set-resources:\n((?:[ #].*\n|\n)*)", text, flags=re.M)
    if block:
        named |= set(re.findall(r"^  #? ?(\w+):\s*$", block[1], flags=re.M))
    rules = workflow_rules()
    assert not named - rules, f"{profile}: rules {sorted(named - rules)} are not in the workflow"
    if profile.parent.name == "slurm":  # the cluster profile sizes the heavy rules
        assert {"propagate", "score", "train"} <= named
