"""The shape of the code: imports point one way and form no cycle, the trainer's step fits on a screen.

The import graph is read from the source (every ``import``, including those
inside functions, where a cycle can hide), with the package-dir mapping
applied (``verifiers/`` is ``reasonrl.verifiers`` and so on). The direction:
entry points -> trainers -> components (rollout, algorithms, models, tasks,
verifiers, sandbox, evals) -> runtime/config.
"""

from __future__ import annotations

import ast
import inspect

from conftest import REPO

ROOTS = {
    "reasonrl": REPO / "reasonrl",
    "reasonrl.verifiers": REPO / "verifiers",
    "reasonrl.sandbox": REPO / "sandbox",
    "reasonrl.evals": REPO / "evals",
}
ENTRY_POINTS = {"reasonrl.train", "reasonrl.finetune", "reasonrl.benchmark", "reasonrl.export"}
TRAINERS = {
    "reasonrl.sft",
    "reasonrl.tiny",
    "reasonrl.models",
    "reasonrl.update",
    "reasonrl.collect",
    "reasonrl.actor",
    "reasonrl.remote",
}


def modules() -> dict[str, ast.Module]:
    out = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts]) if parts else prefix
            if prefix == "reasonrl" and parts and parts[0] in ("verifiers", "sandbox", "evals"):
                continue
            out[name] = ast.parse(path.read_text(), str(path))
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        package = name if (ROOTS.get(name) or name.count(".") == 0) else name.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:  # a submodule naming its own package (`from . import x`) is no edge: the
                if t in mods and t != name and not name.startswith(t + "."):  # package is importing it already
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "reasonrl.verifiers.math" in graph
    assert cycles(graph) == []


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_imports_point_from_entry_points_down():
    graph = import_graph()
    wrong = [(m, t) for m, ts in graph.items() for t in ts if t in ENTRY_POINTS]
    assert wrong == [], f"entry points are imported by nobody: {wrong}"
    components = set(graph) - ENTRY_POINTS - TRAINERS
    wrong = [(m, t) for m in components for t in graph[m] if t in TRAINERS]
    assert wrong == [], f"components must not import trainers: {wrong}"


def test_the_step_fits_on_a_screen():
    from reasonrl.train import GRPOTrainer

    lines = inspect.getsource(GRPOTrainer.step).splitlines()
    assert len(lines) <= 50, len(lines)


def test_the_update_fits_on_a_screen():
    """plan -> forward -> objective -> backward -> step; the rest lives in helpers beside it."""
    from reasonrl.update import update_policy

    lines = inspect.getsource(update_policy).splitlines()
    assert len(lines) <= 60, len(lines)
