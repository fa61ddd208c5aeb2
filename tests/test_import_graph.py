"""The import graph of soco_d2/: no cycle, shared pieces never import a method, and the methods
registry is a leaf (it imports nothing of the engine or the export).

Read from the source with ``ast``, so every import counts: module level, inside functions, and
under ``if TYPE_CHECKING:``. An edge goes from a module to the module that defines what it
imports: ``from .methods import soco`` (a submodule) points to ``soco_d2.methods.soco``, ``from
..methods import get_method`` (a name) to ``soco_d2.methods``. Parent packages that Python runs
on the way (``soco_d2.engine`` before ``soco_d2.engine.hooks``) are not edges: a package whose
``__init__`` imports its own submodules would otherwise be a cycle with each of them.
"""
import ast
import os
from typing import Dict, List, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "soco_d2"
#: The pieces every method builds on; none of them may import a method (soco_d2.methods.*).
SHARED = ("config", "data", "modeling", "solver", "engine", "evaluation", "export", "utils")
REGISTRY = f"{PACKAGE}.methods"

Edge = Tuple[str, str, str]  # (importer, imported, "file:line")


def package_modules(root: str, package: str) -> Dict[str, str]:
    """``{dotted module name: file}`` for every .py under ``root/package``."""
    modules = {}
    for folder, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def import_edges(root: str, package: str = PACKAGE) -> List[Edge]:
    """Every import between the modules of ``package``, relative imports resolved."""
    modules = package_modules(root, package)
    edges = []
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        is_package = os.path.basename(path) == "__init__.py"
        here = module.split(".") if is_package else module.split(".")[:-1]
        where = os.path.relpath(path, root)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
                    base = ".".join(base)
                else:
                    base = node.module
                # a submodule imported by name, else the module that defines the name
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                # `import soco_d2.engine.hooks`: the longest prefix that is one of the modules
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.append((module, target, f"{where}:{node.lineno}"))
    return edges


def find_cycles(edges: List[Edge]) -> List[List[Edge]]:
    """One cycle (as its edges) per strongly connected component that has one (Tarjan)."""
    graph: Dict[str, List[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge[0], []).append(edge)
        graph.setdefault(edge[1], [])
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for _, succ, _ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:
        # the shortest way from the component's smallest member back to it (breadth first)
        start = min(component)
        came_by, frontier = {start: None}, [start]
        while frontier:
            node = frontier.pop(0)
            closing = next((e for e in graph[node] if e[1] == start), None)
            if closing is not None:
                path = [closing]
                while came_by[path[0][0]] is not None:
                    path.insert(0, came_by[path[0][0]])
                cycles.append(path)
                break
            for edge in graph[node]:
                if edge[1] in component and edge[1] not in came_by:
                    came_by[edge[1]] = edge
                    frontier.append(edge[1])
    return cycles


def _shown(edges) -> str:
    return "\n".join(f"  {a} -> {b}  ({where})" for a, b, where in edges)


def is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_import_graph_has_no_cycle():
    cycles = find_cycles(import_edges(REPO_ROOT))
    assert not cycles, "import cycles in soco_d2/:\n" + "\n\n".join(_shown(c) for c in cycles)


def test_shared_pieces_never_import_a_method():
    up = [e for e in import_edges(REPO_ROOT)
          if any(is_in(e[0], f"{PACKAGE}.{s}") for s in SHARED) and is_in(e[1], REGISTRY)]
    assert not up, "shared pieces import soco_d2.methods (a lower layer importing up):\n" + _shown(up)


def test_the_methods_registry_is_a_leaf():
    edges = [e for e in import_edges(REPO_ROOT) if e[0] == REGISTRY
             and (is_in(e[1], f"{PACKAGE}.engine") or is_in(e[1], f"{PACKAGE}.export"))]
    assert not edges, "soco_d2/methods/__init__.py imports the engine or the export:\n" + _shown(edges)


def test_the_graph_sees_function_level_type_checking_and_relative_imports(tmp_path):
    """The checks above can fail: a cycle through a TYPE_CHECKING import and one through an import
    inside a function are found, with their files and lines."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import thing\n    import pkg.sub.c\n")
    (pkg / "sub" / "c.py").write_text("from .. import sub\nfrom ...outside import x\n")
    edges = import_edges(str(tmp_path), "pkg")
    assert sorted(edges) == [
        ("pkg", "pkg.a", os.path.join("pkg", "__init__.py") + ":1"),
        ("pkg.a", "pkg.sub.b", os.path.join("pkg", "a.py") + ":3"),
        ("pkg.sub.b", "pkg.a", os.path.join("pkg", "sub", "b.py") + ":2"),
        ("pkg.sub.b", "pkg.sub.c", os.path.join("pkg", "sub", "b.py") + ":3"),
        ("pkg.sub.c", "pkg.sub", os.path.join("pkg", "sub", "c.py") + ":1"),
    ]
    cycles = find_cycles(edges)
    assert [[e[:2] for e in c] for c in cycles] == [[("pkg.a", "pkg.sub.b"), ("pkg.sub.b", "pkg.a")]]
    assert "pkg.a -> pkg.sub.b  (pkg/a.py:3)".replace("/", os.sep) in _shown(cycles[0])
