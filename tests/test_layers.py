"""The package's layer rules, read from the source with ast (nothing is imported):

- no import cycle among modules;
- no module over MAX_LINES lines;
- methods never import checkpoint I/O (tokensurgeon.checkpoint);
- nothing outside tokensurgeon/cli imports typer or rich.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "tokensurgeon"
MAX_LINES = 400
# Known excess: module -> its line count, a debt that any further growth fails too (none today).
OVERSIZE: dict[str, int] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports (a package's __init__ when a package is named), at any depth
    of the file, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_no_import_cycle():
    edges = graph()
    # a package importing its own submodules (its face) is not a cycle back to it
    edges = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in edges.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_module_over_max_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > OVERSIZE.get(name, MAX_LINES)}
    assert not long, long


def test_methods_never_import_checkpoint_io():
    offenders = {name: sorted(t for t in targets if t == "tokensurgeon.checkpoint"
                              or t.startswith("tokensurgeon.checkpoint."))
                 for name, targets in graph().items() if name.startswith("tokensurgeon.methods")}
    assert not {name: t for name, t in offenders.items() if t}


def test_only_the_cli_imports_typer_or_rich():
    offenders = []
    for name, path in modules().items():
        if name.startswith("tokensurgeon.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            roots = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [(name, root) for root in roots if root.split(".")[0] in ("typer", "rich", "click")]
    assert not offenders, offenders


def test_graph_sees_imports():
    """The parser above resolves relative imports to modules (else every rule would pass vacuously)."""
    edges = graph()
    assert "tokensurgeon.pipeline.session" in edges["tokensurgeon.pipeline.transplant"]
    assert "tokensurgeon.runtime.memory" in edges["tokensurgeon.methods.base"]
