"""config/README.md documents every key the schemas allow (workflow/schemas/*.schema.yaml), each
with a default and an example, and no key they do not; config.yaml's defaults are the schema's.

Driven by the schemas: a key added to a schema fails here until config/README.md has its row.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "workflow" / "schemas"
CONFIG_README = REPO / "config" / "README.md"
# Files whose every key a row documents: config.yaml, then each registry (a name per schema).
FILES = sorted(path.name.removesuffix(".schema.yaml") for path in SCHEMAS.glob("*.schema.yaml"))


def resolved(node, schema: dict):
    """`node` with a local `$ref` (`#/$defs/...`) replaced by what it names (its own keys kept)."""
    while isinstance(node, dict) and "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
    return node


def schema_keys(node, schema: dict, path: str = "") -> dict[str, dict]:
    """{key path: its schema} of every key below `node`: `a.b` for properties, `a[].b` for list
    items, `a.*.b` under a mapping of free names, and the keys of every oneOf/anyOf/allOf branch
    and if/then/else part (the first schema found for a path is kept)."""
    node = resolved(node, schema)
    found: dict[str, dict] = {}
    if not isinstance(node, dict):
        return found

    def add(more: dict[str, dict]) -> None:
        for key, value in more.items():
            found.setdefault(key, value)

    def child(name: str) -> str:
        return f"{path}.{name}" if path else name

    for name, sub in (node.get("properties") or {}).items():
        add({child(name): resolved(sub, schema)})
        add(schema_keys(sub, schema, child(name)))
    if isinstance(node.get("additionalProperties"), dict):
        add(schema_keys(node["additionalProperties"], schema, child("*")))
    if isinstance(node.get("items"), dict):
        add(schema_keys(node["items"], schema, f"{path}[]"))
    for word in ("oneOf", "anyOf", "allOf"):
        for branch in node.get(word) or []:
            add(schema_keys(branch, schema, path))
    for word in ("then", "else"):
        if isinstance(node.get(word), dict):
            add(schema_keys(node[word], schema, path))
    return found


def documented_keys(name: str) -> dict[str, dict]:
    """For the `## `<name>.yaml`` section of config/README.md: {key path: {what, default,
    example}} of its table rows, `{x,y}` in a key expanded to one row per choice."""
    text = CONFIG_README.read_text()
    section = re.search(rf"^## `{re.escape(name)}\.yaml`\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, f"config/README.md has no section ## `{name}.yaml`"
    rows = {}
    for line in section.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if not cells:
            continue
        assert len(cells) == 4, f"config/README.md, {name}.yaml: a row needs key, what, default, example: {line}"
        key = cells[0].strip("`")
        parts = re.split(r"\{([^}]*)\}", key)
        choices = [part.split(",") if index % 2 else [part] for index, part in enumerate(parts)]
        for expanded in itertools.product(*choices):
            rows["".join(expanded)] = {"what": cells[1], "default": cells[2], "example": cells[3]}
    return rows


def registry_key(path: str) -> str:
    """A registry's key path as documented: relative to one entry (`*.files[].name` -> `files[].name`)."""
    return path.removeprefix("*.")


@pytest.mark.parametrize("name", FILES)
def test_every_schema_key_is_documented_with_a_default_and_an_example(name):
    schema = yaml.safe_load((SCHEMAS / f"{name}.schema.yaml").read_text())
    keys = {registry_key(path) for path in schema_keys(schema, schema)}
    documented = documented_keys(name)
    assert sorted(keys - set(documented)) == [], f"keys of {name}.schema.yaml that config/README.md does not document"
    assert sorted(set(documented) - keys) == [], f"keys config/README.md documents that {name}.schema.yaml does not have"
    for key, row in documented.items():
        assert row["what"] and row["default"] and row["example"], f"{name}.yaml {key}: what, default and example"


def test_the_config_defaults_documented_are_the_schemas():
    schema = yaml.safe_load((SCHEMAS / "config.schema.yaml").read_text())
    documented = documented_keys("config")
    defaults = {path: node["default"] for path, node in schema_keys(schema, schema).items() if "default" in node}
    assert len(defaults) > 20
    for path, default in defaults.items():
        cell = documented[path]["default"]
        assert re.fullmatch(r"`[^`]*`", cell), f"config.yaml {path}: the default cell {cell!r} is not one `value`"
        assert yaml.safe_load(cell.strip("`")) == default, f"config.yaml {path}: README says {cell}, the schema {default!r}"


def test_the_walk_finds_keys_under_refs_lists_maps_and_branches():
    schema = {
        "$defs": {"pair": {"type": "object", "properties": {"left": {}, "right": {}}}},
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/pair"}},
                           "named": {"type": "object", "additionalProperties": {"properties": {"size": {}}}}},
            "allOf": [{"if": {"properties": {"kind": {"const": "a"}}}, "then": {"properties": {"extra": {}}}}],
            "oneOf": [{"properties": {"first": {}}}, {"properties": {"second": {}}}],
        },
    }
    assert set(schema_keys(schema, schema)) == {
        "*.items", "*.items[].left", "*.items[].right", "*.named", "*.named.*.size", "*.extra", "*.first", "*.second"}
