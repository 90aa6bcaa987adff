"""The import structure of src/mimkit, read with `ast` (nothing is imported).

Every `import` / `from ... import` of a mimkit module counts, at module level and inside
functions, classes and `if`/`try` blocks alike (a lazy import is still a dependency).
`from mimkit.data import sources` is an edge to the module `mimkit.data.sources`; an import of
`mimkit.x.y` is not also an edge to the package `mimkit.x`.

The rules:

(a) No import cycles between modules.

(b) No module imports from a higher layer; a module may import its own layer and lower ones.
    The layers (PLAN.md), bottom to top:
        0 errors, patches, progress,     4 data
          crops, yamlio
        1 masking                        5 config, train
        2 models                         6 eval, compress, interop, inspect, bench, report
        3 objectives                     7 cli
    A new top-level module or package must be given a layer in LAYERS below.

(c) An import inside a function or class body ("function-level") must say why it is lazy: a `#`
    comment on one of its lines, or on the line just above it, containing
      - "optional": the module is an optional dependency (an extra of pyproject.toml such as
        transformers, timm, scikit-learn, matplotlib, av, tifffile, nibabel; or a torch
        submodule that older torch versions lack), e.g. `import av  # optional: mimkit[video]`;
      - or, in the cli (layer 7) only, "start" or "--help": deferred so that `mimkit --help`
        starts fast.
    A comment just above a block of consecutive imports (blank lines allowed) covers the block.
    This holds for every imported module, mimkit's own, torch, numpy and the standard library:
    anything else belongs at the top of the file. An import of an optional dependency at module
    level inside `try:` is module-level and needs no comment.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = {
    # the package: __version__, and the public API (mimkit.api) loaded on first use; at the top
    # with the cli so that its lazy import may give a fast start as its reason
    "mimkit": 7,
    "mimkit.api": 6,
    "mimkit.errors": 0,
    "mimkit.patches": 0,
    "mimkit.progress": 0,
    "mimkit.crops": 0,
    "mimkit.yamlio": 0,
    "mimkit.masking": 1,
    "mimkit.models": 2,
    "mimkit.objectives": 3,
    "mimkit.data": 4,
    "mimkit.config": 5,
    "mimkit.train": 5,
    "mimkit.eval": 6,
    "mimkit.compress": 6,
    "mimkit.interop": 6,
    "mimkit.inspect": 6,
    "mimkit.bench": 6,
    "mimkit.report": 6,
    "mimkit.plan": 6,
    "mimkit.cli": 7,
}
CLI_LAYER = 7
LAZY_REASON = re.compile(r"#.*\boptional\b", re.IGNORECASE)
FAST_START_REASON = re.compile(r"#.*(\bstart|--help)", re.IGNORECASE)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module, absolute
    line: int
    lazy: bool  # inside a function or class body
    reason: bool  # a comment on the line or the one above says why it is lazy


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of the longest LAYERS prefix of `module` (None: not in the table).

    The package `mimkit` itself matches only itself, not every module under it."""
    if module == "mimkit":
        return LAYERS[module]
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        layer = LAYERS.get(".".join(parts[:end]))
        if layer is not None:
            return layer
    return None


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


IMPORT_LINE = re.compile(r"^\s*(import|from)\s|^\s*[\w, ]+,?$|^\s*\)$")


def _has_reason(lines: list[str], node: ast.stmt, module: str) -> bool:
    # the statement's own lines (a multi-line `from x import (...)` may carry it on any), the
    # line above it, and the line above the block of imports it belongs to (one comment may
    # say why a group of consecutive lazy imports is lazy)
    first = node.lineno - 1
    while first > 0 and (IMPORT_LINE.match(lines[first - 1]) or not lines[first - 1].strip()):
        first -= 1
    nearby = lines[max(0, first - 1) : node.end_lineno or node.lineno]
    if any(LAZY_REASON.search(line) for line in nearby):
        return True
    return layer_of(module) == CLI_LAYER and any(FAST_START_REASON.search(ln) for ln in nearby)


def read_imports(
    source: str, module: str, is_package: bool, known: set[str] | frozenset[str] = frozenset()
) -> list[Import]:
    """Every import statement of `source` as Import records (all modules, not only mimkit's).

    `from a import b` targets the module `a.b` when `a.b` is in `known`, else `a`.
    """
    lines = source.splitlines()
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    targets = [alias.name for alias in child.names]
                else:
                    base = _absolute(module, is_package, child)
                    subs = [f"{base}.{alias.name}" for alias in child.names]
                    targets = [sub for sub in subs if sub in known] or [base]
                    if base == "__future__":
                        continue
                reason = _has_reason(lines, child, module) if lazy else False
                for target in targets:
                    found.append(Import(module, target, child.lineno, lazy, reason))
            inner = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            visit(child, lazy or inner)

    visit(ast.parse(source), lazy=False)
    return found


def all_imports(root: Path = SRC) -> tuple[dict[str, Path], list[Import]]:
    paths = {module_name(p, root): p for p in sorted((root / "mimkit").rglob("*.py"))}
    imports = []
    for module, path in paths.items():
        imports += read_imports(
            path.read_text(), module, path.name == "__init__.py", known=set(paths)
        )
    return paths, imports


def mimkit_edges(imports: list[Import]) -> list[Import]:
    return [
        imp
        for imp in imports
        if (imp.target == "mimkit" or imp.target.startswith("mimkit.")) and imp.target != imp.module
    ]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected component that has one."""
    cycles = []
    for component in strongly_connected(graph):
        start = component[0]
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        cycles.append(_path_back(graph, start, set(component)))
    return sorted(cycles)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of `graph`, each sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
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
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def _path_back(graph: dict[str, set[str]], start: str, members: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph.get(node, ())):
                if nxt not in members or nxt in parents:
                    continue
                parents[nxt] = node
                if nxt == start:
                    path = [start]
                    while path[-1] != start or len(path) == 1:
                        path.append(parents[path[-1]])
                    return path[::-1]
                nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def import_graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in mimkit_edges(imports):
        graph.setdefault(imp.module, set()).add(imp.target)
    return graph


def where(imp: Import, paths: dict[str, Path]) -> str:
    path = paths.get(imp.module)
    shown = path.relative_to(SRC.parent) if path is not None else imp.module
    return f"{shown}:{imp.line}"


# --- the rules on src/mimkit ---------------------------------------------------------------


def test_every_module_has_a_layer():
    paths, _ = all_imports()
    assert len(paths) > 20, "src/mimkit was not found"
    missing = sorted(m for m in paths if layer_of(m) is None)
    assert not missing, f"modules without a layer (add them to LAYERS): {missing}"


def test_no_import_cycles():
    _, imports = all_imports()
    cycles = find_cycles(import_graph(imports))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_imports_from_a_higher_layer():
    paths, imports = all_imports()
    upward = []
    for imp in mimkit_edges(imports):
        low, high = layer_of(imp.module), layer_of(imp.target)
        if low is not None and high is not None and high > low:
            upward.append(
                f"{where(imp, paths)}: {imp.module} (layer {low}) imports {imp.target} "
                f"(layer {high})"
            )
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_function_level_imports_say_why():
    paths, imports = all_imports()
    unexplained = [
        f"{where(imp, paths)}: {imp.target}" for imp in imports if imp.lazy and not imp.reason
    ]
    assert not unexplained, (
        "imports inside functions without a comment saying why they are lazy "
        "(see the rule (c) in this file's docstring):\n" + "\n".join(unexplained)
    )


# --- the checker itself, on small made-up sources -------------------------------------------


def test_reader_sees_function_level_and_relative_imports():
    source = (
        "import torch\n"
        "from . import sources\n"
        "from ..errors import DataError\n"
        "try:\n"
        "    import av\n"
        "except ImportError:\n"
        "    av = None\n"
        "def f():\n"
        "    # optional: mimkit[tiff]\n"
        "    import tifffile\n"
        "def h():\n"
        "    from mimkit.train import loop  # no reason given\n"
        "class A:\n"
        "    def g(self):\n"
        "        import numpy as np  # optional dependency\n"
    )
    known = {"mimkit.data.sources", "mimkit.train.loop"}
    found = read_imports(source, "mimkit.data.video", is_package=False, known=known)
    got = {(i.target, i.lazy, i.reason) for i in found}
    assert got == {
        ("torch", False, False),
        ("mimkit.data.sources", False, False),
        ("mimkit.errors", False, False),
        ("av", False, False),
        ("tifffile", True, True),
        ("mimkit.train.loop", True, False),
        ("numpy", True, True),
    }


def test_fast_start_is_a_reason_only_in_the_cli():
    source = "def f():\n    import torch  # deferred so that mimkit starts fast\n"
    (in_cli,) = read_imports(source, "mimkit.cli.pretrain", is_package=False)
    (in_data,) = read_imports(source, "mimkit.data.sources", is_package=False)
    assert in_cli.reason and not in_data.reason


def test_cycles_are_named_and_layers_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("mimkit.data.modalities") == 4
    assert layer_of("mimkit.cli") == 7
    assert layer_of("mimkit.configs") is None  # a prefix must end at a dot
