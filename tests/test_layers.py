"""The dependency rule of the layout (README, "How the code is laid out"), read from the source.

Foundation (pipeline.core, pipeline.config, pipeline.engine) imports no stage and no orchestration;
stages (evolve_local, finetune, eval) import the foundation and themselves only; orchestration (the
rest of pipeline) imports anything but the benchmarks; nothing imports the benchmarks. No cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "evolve_local", "finetune", "eval", "benchmarks")
FOUNDATION = ("pipeline.core", "pipeline.config", "pipeline.engine")
STAGES = ("evolve_local", "finetune", "eval")


def layer(module: str) -> str:
    def under(prefixes):
        return any(module == p or module.startswith(p + ".") for p in prefixes)

    if module == "pipeline" or under(FOUNDATION):  # pipeline/__init__.py only sets the offline environment
        return "foundation"
    if under(STAGES):
        return "stage:" + module.split(".")[0]
    if under(("benchmarks",)):
        return "benchmarks"
    return "orchestration"


def project_modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in PACKAGES:
            modules[".".join(parts).removesuffix(".__init__")] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `path` imports, anywhere in the file (a lazy import inside a function counts)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def allowed(source: str, target: str) -> bool:
    a, b = layer(source), layer(target)
    if b == "benchmarks":
        return a == "benchmarks"
    if a == "foundation":
        return b == "foundation"
    if a.startswith("stage:"):
        return b in ("foundation", a)
    return True  # orchestration and benchmarks sit on top


MODULES = project_modules()
GRAPH = {m: {t for t in imports_of(p, MODULES) if t != m and not m.startswith(t + ".")} for m, p in MODULES.items()}


def test_the_layers_are_classified_as_the_readme_says():
    assert layer("pipeline.core.jsonio") == layer("pipeline.engine.vllm_backend") == "foundation"
    assert layer("pipeline.config.evolve") == "foundation"
    assert layer("eval.analysis.metrics") == "stage:eval" and layer("evolve_local.evolve") == "stage:evolve_local"
    assert layer("pipeline.run") == layer("pipeline.cli.evolve") == layer("pipeline.report") == "orchestration"
    assert layer("benchmarks.bench") == "benchmarks"
    assert not allowed("evolve_local.evolve", "eval.judge") and not allowed("pipeline.core.manifest", "pipeline.run")
    assert not allowed("pipeline.run", "benchmarks.bench") and allowed("benchmarks.bench", "evolve_local.evolve")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    wrong = sorted(t for t in GRAPH[module] if not allowed(module, t))
    assert not wrong, f"{module} ({layer(module)}) imports {[(t, layer(t)) for t in wrong]}"


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_the_walk_sees_real_edges():
    """Guards the test itself: a walk that found no edges would pass everything above."""
    assert "pipeline.engine.types" in GRAPH["evolve_local.steps"] | {
        t for m in GRAPH["evolve_local.steps"] for t in GRAPH.get(m, ())
    }
    assert "evolve_local.evolve" in GRAPH["pipeline.cli.evolve"]
    assert sum(map(len, GRAPH.values())) > 100
