"""Where an output comes from: the git state of the checkout, package versions, and digests of the
code that computes each kind of output (predictions, scores, trained models).

A code digest identifies what a piece of code computes, not how its files look. The digest of an
entry point covers every vcorr module it can reach, found from the code itself: static imports
anywhere in a module (function-level ones included), the packages above each module (importing a
module runs them), and module names spelled as strings (how lazy package exports and registries
name modules). Each module counts by its syntax tree without docstrings, so comments, docstrings
and formatting never change a digest, and any change to code does.

An entry `module:function` covers that function, the functions and classes of its module that it
names (transitively), the module-level statements it names or that run at import, and what all
of those import: one scorer's digest then does not move with another scorer's code in the same
module. Code reached only through a name built at run time is not seen: registries name their
modules as literal strings for that reason, or the digest's entries name those modules (training:
the loop and the method's module).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import re
import subprocess
from pathlib import Path
from typing import Any

PACKAGE = "vcorr"
PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT = PACKAGE_DIR.parent
_MODULE_NAME = re.compile(rf"{PACKAGE}(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def git_state(checkout: Path = CHECKOUT) -> dict[str, Any]:
    """Commit of the checkout vcorr runs from, and whether tracked files differ from it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- code digests ------------------------------------------------------------------------------


def package_modules() -> list[str]:
    """Every module of the vcorr package, by name."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        names.append(".".join([PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)]))
    return names


def module_file(name: str) -> Path | None:
    """The source file of vcorr module `name` (a package's `__init__.py`), None if there is none."""
    if not _MODULE_NAME.fullmatch(name):
        return None
    base = PACKAGE_DIR.joinpath(*name.split(".")[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, *_DEFINITIONS)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def _file_key(name: str) -> tuple[Path, int, int]:
    path = module_file(name)
    if path is None:
        raise ValueError(f"{name}: not a module of the {PACKAGE} package in {PACKAGE_DIR}")
    status = path.stat()
    return path, status.st_mtime_ns, status.st_size


def _parsed(name: str) -> ast.Module:
    return _parse_file(*_file_key(name))


@functools.lru_cache(maxsize=512)
def _parse_file(path: Path, mtime_ns: int, size: int) -> ast.Module:
    """Parsed once per version of the file (the key changes when the file does)."""
    return _without_docstrings(ast.parse(path.read_text(), filename=str(path)))


def _whole_module(name: str) -> tuple[str, frozenset[str]]:
    """(code without docstrings, what it can import) of a whole module."""
    return _whole_module_of_file(name, *_file_key(name))


@functools.lru_cache(maxsize=512)
def _whole_module_of_file(name: str, path: Path, mtime_ns: int, size: int) -> tuple[str, frozenset[str]]:
    tree = _parse_file(path, mtime_ns, size)
    return ast.dump(tree), frozenset(_imported([tree], name))


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def _named_modules(nodes: list[ast.AST], module: str) -> set[str]:
    """vcorr modules that `nodes` (of `module`) import or name as strings."""
    path = module_file(module)
    package = module if path is not None and path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                submodules = {name for name in (f"{base}.{alias.name}" for alias in node.names) if module_file(name)}
                found.update(submodules)
                if len(submodules) < len(node.names):
                    found.add(base)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return {name for name in found if module_file(name)}


def direct_imports(module: str) -> set[str]:
    """The vcorr modules `module` imports anywhere in its code or names as strings (not the
    packages above them, which Python imports implicitly): the edges of the import graph."""
    return _named_modules([_parsed(module)], module) - {module}


def _imported(nodes: list[ast.AST], module: str) -> set[str]:
    """What running `nodes` can import: the modules they name and every package above those."""
    modules = _named_modules(nodes, module)
    return modules | {parent for name in modules for parent in _parents(name)}


def _names(nodes: list[ast.AST]) -> set[str]:
    return {node.id for root in nodes for node in ast.walk(root) if isinstance(node, ast.Name)}


def _assigned(statement: ast.stmt) -> set[str]:
    targets = getattr(statement, "targets", None) or [getattr(statement, "target", None)]
    return {node.id for target in targets if target is not None for node in ast.walk(target) if isinstance(node, ast.Name)}


def _function_part(module: str, function: str) -> list[ast.AST]:
    """The statements of `module` that `function` depends on (see the module docstring)."""
    body = _parsed(module).body
    definitions = {node.name: node for node in body if isinstance(node, _DEFINITIONS)}
    if function not in definitions:
        raise ValueError(f"{module}: defines no function or class {function!r}")
    statements = [node for node in body if not isinstance(node, _DEFINITIONS)]
    kept: dict[int, ast.AST] = {id(definitions[function]): definitions[function]}
    while True:
        names = _names(list(kept.values()))
        more = [definitions[name] for name in names if name in definitions]
        more += [node for node in statements
                 if isinstance(node, (ast.Import, ast.ImportFrom)) or not _assigned(node) or _assigned(node) & names]
        added = [node for node in more if id(node) not in kept]
        if not added:
            return [node for node in body if id(node) in kept]
        kept.update((id(node), node) for node in added)


def code_closure(*entries: str) -> dict[str, str]:
    """{module or module:function: its code without docstrings} for every entry and what it reaches."""
    code: dict[str, str] = {}
    pending: list[str] = []
    for entry in entries:
        module, _, function = entry.partition(":")
        if function:
            nodes = _function_part(module, function)
            code[entry], imported = "\n".join(ast.dump(node) for node in nodes), _imported(nodes, module)
        else:
            code[entry], imported = _whole_module(module)
        pending += sorted(imported | set(_parents(module)))
    while pending:
        module = pending.pop()
        if module in code:
            continue
        code[module], imported = _whole_module(module)
        pending += sorted(imported - set(code))
    return code


def code_digest(*entries: str) -> str:
    """sha256 of the code of `entries` (vcorr module names, or `module:function`) and of every vcorr
    module they reach; see the module docstring."""
    digest = hashlib.sha256()
    for name, code in sorted(code_closure(*entries).items()):
        digest.update(f"{name}\0{code}\0".encode())
    return digest.hexdigest()
