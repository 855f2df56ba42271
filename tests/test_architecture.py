"""The house rules of docs/architecture.md, checked on the source: imports point one way, nothing closes a
cycle (not even through an import inside a function), and the hot agent path stays lean."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workctl"

# layer -> layers it must never import. A layer is a subpackage (core, store, …) or a top-level module.
FORBIDDEN = {
    "store": {"core", "types", "agents", "sources", "api", "commands", "server", "cli", "demo"},
    "core": {"agents", "sources", "api", "commands", "server", "cli", "demo"},
    "types": {"agents", "sources", "api", "commands", "server", "cli", "demo"},
    "sources": {"core", "types", "agents", "api", "commands", "server", "cli", "demo"},
    "agents": {"api", "commands", "server", "cli", "demo"},
    "api": {"commands", "server", "cli", "demo"},
    # `workctl config`'s report: reads the config, the sources' and webhooks' settings; called by api only
    "config_report": {"commands", "server", "cli", "demo", "agents", "api", "types"},
    # the HTTP surface calls the library only (one Workctl method per route), like a command
    "server": {"commands", "cli", "demo", "core", "store", "types", "agents", "sources"},
    # the lowest level: every layer may use these, they use nothing of workctl but each other
    "errors": {"store", "core", "types", "sources", "agents", "api", "commands", "server", "cli", "demo"},
    "clock": {"store", "core", "types", "sources", "agents", "api", "commands", "server", "cli", "demo"},
    "config": {"store", "core", "types", "sources", "agents", "api", "commands", "server", "cli", "demo"},
    "jsonio": {"store", "core", "types", "sources", "agents", "api", "commands", "server", "cli", "demo"},
    "strictjson": {"store", "core", "types", "sources", "agents", "api", "commands", "server", "cli", "demo"},
    "states": {"store", "core", "types", "sources", "agents", "api", "commands", "server", "cli", "demo"},
    "limits": {"store", "core", "types", "sources", "agents", "api", "commands", "server", "cli", "demo"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "workctl"


def imports_of(path: Path) -> set[str]:
    """Every workctl module this file imports, at any depth (function-level imports included)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("workctl"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("workctl"):
                continue
            for alias in node.names:  # `from . import leases` imports the module workctl.core.leases
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return found


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): imports_of(p) & MODULES for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_one_way(module: str) -> None:
    banned = FORBIDDEN.get(layer(module), set())
    wrong = sorted(target for target in GRAPH[module] if layer(target) in banned)
    assert not wrong, f"{module} imports {wrong}: {layer(module)} must not depend on {sorted(banned)}"


def test_nothing_but_the_app_imports_a_command() -> None:
    importers = sorted(m for m, targets in GRAPH.items()
                       if any(layer(t) == "commands" for t in targets)
                       and layer(m) != "commands" and m != "workctl.cli.app")
    assert importers == []


def test_nothing_imports_the_docs_generator() -> None:
    """docsgen describes the code; the code never depends on its description."""
    importers = sorted(m for m, targets in GRAPH.items()
                       if any(layer(t) == "docsgen" for t in targets) and layer(m) != "docsgen")
    assert importers == []


def test_there_is_no_import_cycle() -> None:
    """Tarjan's strongly connected components over every import (a package's __init__ re-exporting its
    own submodules is not a cycle of concern and is left out)."""
    graph = {m: {t for t in targets if not (m.startswith(t + ".") and t in GRAPH)} for m, targets in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []


def test_the_rule_table_covers_every_layer() -> None:
    """A new subpackage gets a rule (or is consciously left free, like the CLI at the top)."""
    # docsgen (the generated docs) reads every surface to describe it, like the CLI that sits on them all
    top = {"commands", "cli", "demo", "workctl", "__main__", "docsgen"}
    assert {layer(m) for m in GRAPH} - top <= set(FORBIDDEN)


def test_the_map_names_every_module() -> None:
    """docs/architecture.md is where a newcomer looks a concept up: every module must be in it, by its path
    under workctl/ or as `name.py` in its package's row (a command by the `commands/<command>.py` row)."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    unnamed = sorted(
        str(relative) for relative in (p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py"))
        if relative.name != "__init__.py"
        and not (relative.parts[0] == "commands" and not relative.name.startswith("_"))
        and str(relative) not in text and f"`{relative.name}`" not in text)
    assert unnamed == [], f"docs/architecture.md does not say where these are: {unnamed}"
