"""The package's import graph: no module imports itself back through others, and layers point one way.

Read from the syntax trees (every ``import``, also the lazy ones inside functions), so nothing is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nrp_deploy"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (a package import counts as its ``__init__``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import module` imports the submodule; `from module import name` the module itself
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module name -> the package's modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: _imports(path, name, known) for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "nrp_deploy.bench.runner" in graph["nrp_deploy.bench.torch_configs"]
    assert "nrp_deploy.bench.torch_configs" in graph["nrp_deploy.bench.targets"]  # a lazy import counts


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_layers_point_one_way():
    """cli -> {evaluation, bench, serving} -> {attacks, runtime, export} -> {models, kernels}: never
    backwards."""
    upper = ("nrp_deploy.cli", "nrp_deploy.evaluation", "nrp_deploy.bench", "nrp_deploy.serving")
    lower = (
        "nrp_deploy.attacks",
        "nrp_deploy.runtime",
        "nrp_deploy.export",
        "nrp_deploy.models",
        "nrp_deploy.kernels",
    )
    backwards = [
        (module, target)
        for module, targets in import_graph().items()
        if module.startswith(lower)
        for target in targets
        if target.startswith(upper)
    ]
    assert backwards == []
    bench_to_evaluation = {
        (m, t)
        for m, ts in import_graph().items()
        if m.startswith("nrp_deploy.bench")
        for t in ts
        if t.startswith("nrp_deploy.evaluation")
    }
    # the benchmark borrows the one PSNR; it does not depend on the robustness evaluation's torch stack
    assert bench_to_evaluation <= {("nrp_deploy.bench.harness", "nrp_deploy.evaluation.metrics")}
