"""The package layering of DESIGN.md, checked on the source: imports point down only, no cycles,
no module far above ~400 lines.

Bottom to top: the ground (`rscf`: settings, the pool table, clock, S3 and Kafka client factories),
contracts (`schemas`), step logic (`operators`), the runtimes (`jobs`, `inference_workers`; peers
that never import each other), how they run (`deploy`), benchmarks and tools (`tools`), the CLI (`cli`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS: dict[str, int] = {
    "rscf": 0, "schemas": 1, "operators": 2, "jobs": 3, "inference_workers": 3, "gateway": 3,
    "deploy": 4, "baselines": 4, "tools": 5, "cli": 6,
}
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    found = {}
    for top in LAYERS:
        for path in (REPO / top).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only: no import at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names this module imports at run time (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base)
                mod = f"{prefix}.{node.module}" if node.module else prefix
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in LAYERS}


MODULES = _modules()
GRAPH = {m: {n for n in _imports(m, p) if n in MODULES and n != m} for m, p in MODULES.items()}


def test_every_layer_exists():
    assert {m.split(".")[0] for m in MODULES} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    top = module.split(".")[0]
    upward = sorted(n for n in GRAPH[module]
                    if n.split(".")[0] != top and LAYERS[n.split(".")[0]] >= LAYERS[top])
    assert not upward, f"{module} ({top}, layer {LAYERS[top]}) imports {upward}"


def test_no_import_cycles():
    """Tarjan's strongly connected components over module imports; any component of 2+ is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines (split it by step; the limit is ~400)"


def test_test_file_names_are_unique():
    """pytest imports test files by basename (no packages under tests/): two files of one name in
    unit/ and integration/ make the whole suite fail to collect."""
    names = [p.name for p in (REPO / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
