"""The import rules of docs/architecture.md, checked on the source text (ast), not by importing.

- `instruments` never imports `simulator`;
- `protocols` imports no project package but `database` and its own;
- `database` imports no higher package (protocols, training, simulator, instruments, xbarlab);
- `instruments` and `simulator` take only the rig seam (`protocols.rig`) from `protocols`, and
  the seam imports nothing of `protocols` but its errors and `protocols.interrupts` (two leaf
  modules), so the graph stays acyclic;
- nothing outside `training` imports torch at module level;
- no two project modules import each other, directly or around a loop (a function-level import
  counts: xbarlab/demo.py and a step module importing each other "lazily" is still a tangle).

Every import counts, also one inside a function, except where a rule says "module level".
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("instruments", "simulator", "protocols", "database", "training", "xbarlab")
SEAM = "protocols.rig"

#: package -> project packages it must not import (an entry "pkg.mod" forbids that module)
FORBIDDEN = {
    "instruments": {"simulator", "database", "training", "xbarlab"},
    "protocols": {"instruments", "simulator", "training", "xbarlab"},
    "database": {"protocols", "training", "simulator", "instruments", "xbarlab"},
    "simulator": {"database", "training", "xbarlab"},
}
#: packages that may take from `protocols` only the seam module
SEAM_ONLY = ("instruments", "simulator")


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) of every absolute import in a source file."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from pkg import mod` may name a module: count both spellings
                out.append((child.module, child.lineno, top))
                out.extend((f"{child.module}.{a.name}", child.lineno, top) for a in child.names)
            scope = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                       ast.ClassDef))
            visit(child, top and not scope)

    visit(tree, True)
    return out


def _in(module: str, target: str) -> bool:
    return module == target or module.startswith(target + ".")


def violations(root: Path) -> list[str]:
    found: list[str] = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            mod = ".".join(rel.with_suffix("").parts)
            for name, line, top in imports(path):
                where = f"{rel}:{line}"
                if any(_in(name, bad) for bad in FORBIDDEN.get(pkg, ())):
                    found.append(f"{where}: {pkg} imports {name}")
                if pkg in SEAM_ONLY and _in(name, "protocols") and not (
                        name in ("protocols", SEAM) or _in(name, SEAM)):
                    found.append(f"{where}: {pkg} imports {name}; only {SEAM} is allowed")
                if mod == SEAM and _in(name, "protocols") and not (
                        _in(name, "protocols.errors") or _in(name, "protocols.interrupts")
                        or name == "protocols"):
                    found.append(f"{where}: the seam imports {name}")
                if pkg != "training" and top and _in(name, "torch"):
                    found.append(f"{where}: {pkg} imports torch at module level")
    return found


def module_graph(root: Path) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (a package counts as its __init__; a
    submodule importing its own package is not an edge: Python packages do that)."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        edges = set()
        for name, _line, _top in imports(path):
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name != mod and not mod.startswith(name + "."):
                edges.add(name)
        graph[mod] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_two_modules_import_each_other():
    assert import_cycles(module_graph(ROOT)) == []


def test_a_lazy_import_cycle_is_found(tmp_path):
    for name, text in {"xbarlab/demo.py": "from xbarlab.steps import step\n",
                       "xbarlab/steps.py": "def step():\n    from xbarlab.demo import TITLES\n",
                       "xbarlab/other.py": "from xbarlab import demo\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert import_cycles(module_graph(tmp_path)) == [["xbarlab.demo", "xbarlab.steps"]]


def test_the_sources_follow_the_import_rules():
    assert violations(ROOT) == []


def test_each_rule_catches_a_violation(tmp_path):
    bad = {
        "instruments/a.py": "def f():\n    from simulator.chip import VirtualChip\n",
        "instruments/b.py": "from protocols.tuning import tune\n",
        "protocols/c.py": "import instruments.limits\n",
        "protocols/d.py": "from xbarlab import station\n",
        "protocols/rig.py": "from protocols.tuning import tune\n",
        "database/e.py": "def v():\n    from xbarlab import __version__\n",
        "simulator/f.py": "from protocols.campaigns import CAMPAIGNS\n",
        "xbarlab/g.py": "try:\n    import torch\nexcept ImportError:\n    torch = None\n",
    }
    fine = {
        "instruments/ok.py": "from protocols.rig import CrossbarRig\nfrom protocols import rig\n",
        "protocols/ok.py": "from database.runs import RunWriter\nimport numpy\n",
        "xbarlab/ok.py": "def f():\n    import torch\n",
        "training/ok.py": "import torch\n",
    }
    for name, text in {**bad, **fine}.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    found = violations(tmp_path)
    for name in bad:
        assert any(v.startswith(name) for v in found), (name, found)
    assert not [v for v in found if "/ok.py" in v], found
