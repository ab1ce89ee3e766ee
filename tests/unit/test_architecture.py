"""Architecture rules, checked on the source (DESIGN §6): no import cycle, the layer rule, unique class names.

The import graph is built from the AST of every .py under the project's packages: top-level imports and
imports inside functions alike (a function-level import is still an edge: it only hides the cycle until the
function runs).  ``from a.b import c`` is an edge to ``a.b.c`` when that is a module of ours, else to ``a.b``.
Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, but that is not counted as an edge: it cannot
make a cycle Python does not already resolve.

There are no allow-lists: a violation is fixed, not recorded.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "workers", "topology", "backchannel", "packet", "bench")

def _module_files() -> dict[str, Path]:
    """Module name → file, for every .py of our packages (``a/__init__.py`` is module ``a``)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _resolve(name: str) -> str | None:
    """The module of ours that importing ``name`` runs last (``a.b.C`` → ``a.b``), or None if not ours."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_pkg else module.split(".")[:-1]
                up = here[:len(here) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if base else a.name for a in node.names]
        else:
            continue
        for t in targets:
            hit = _resolve(t)
            if hit is not None and hit != module:
                out.add(hit)
    return out


GRAPH = {mod: _imports(mod, path) for mod, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle through it."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, comp) for comp in sccs]


def _one_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (for the message)."""
    members, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def _top(module: str) -> str:
    return module.split(".")[0]


# What each layer may import of ours (besides itself).  None: anything but bench.
MAY_IMPORT = {
    "packet": set(),
    "backchannel": set(),
    "topology": {"packet", "backchannel"},
    "workers": {"topology", "packet", "backchannel"},
    "engine": None,
    "bench": None,
}


def test_the_graph_sees_the_imports_it_must():
    # sanity: top-level, function-level and "from package import module" imports are all edges
    assert "workers.simulation.conntrack" in GRAPH["workers.simulation.chains"]     # from ... import conntrack
    assert "engine.run" in GRAPH["engine.cli"]                                       # inside cmd_run
    assert "packet.packet" in GRAPH["packet.spec"]


def test_no_import_cycle():
    cycles = list(_cycles(GRAPH))
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def _layer_violations() -> set[tuple[str, str]]:
    bad = set()
    for mod, deps in GRAPH.items():
        layer = _top(mod)
        allowed = MAY_IMPORT[layer]
        for dep in deps:
            other = _top(dep)
            if other == layer:
                continue
            if other == "bench" or (allowed is not None and other not in allowed):
                bad.add((mod, dep))
    return bad


def test_layer_rule():
    """packet and backchannel are leaves; topology sits on them; workers never import engine; nobody but bench
    imports bench."""
    bad = _layer_violations()
    assert not bad, "layer rule broken (importer → imported):\n" + "\n".join(f"{a} → {b}" for a, b in sorted(bad))


def _classes() -> dict[str, set[str]]:
    where: dict[str, set[str]] = defaultdict(set)
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                where[node.name].add(str(path.relative_to(ROOT)))
    return where


def test_class_names_are_unique():
    dup = {name: files for name, files in _classes().items() if len(files) > 1}
    assert not dup, "class names defined in more than one module:\n" + "\n".join(
        f"{n}: {', '.join(sorted(f))}" for n, f in sorted(dup.items()))


def test_class_names_unique_within_a_module_too():
    for path in MODULES.values():
        names = [n.name for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.ClassDef)]
        assert len(names) == len(set(names)), f"{path.relative_to(ROOT)} defines a class name twice"


def test_module_names_are_unique_within_a_package():
    """Two modules of one package with one name (``topology/mirror.py``, ``topology/store/mirror.py``) read as
    one in a traceback, a grep or a conversation."""
    by_name: dict[tuple[str, str], list[str]] = defaultdict(list)
    for mod, path in MODULES.items():
        if path.name != "__init__.py":
            by_name[(_top(mod), path.stem)].append(mod)
    dup = {n: mods for n, mods in by_name.items() if len(mods) > 1}
    assert not dup, f"module names used twice in one package: {dup}"
