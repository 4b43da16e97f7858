"""The layers of the package and their dependency direction, enforced on the source.

Layers, lowest first (README, "Code map"): base, data, evaluation, models, training, deploy (export,
runtime, serving), measure (bench, report), commands, cli. A module imports its own layer and the
layers below, never above, plus the narrower rules in ``FORBIDDEN`` (serving never loads the model
code or torch; bench and report never train; ...). Every import statement counts, including the
lazy ones inside functions: a lazy import hides a dependency from start-up time, not from the
architecture. And no two modules import each other, directly or around a loop, at any level.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sskd_deploy"
HEAVY = {"torch", "transformers", "onnx", "onnxruntime", "onnxscript", "tensorrt", "torch_tensorrt", "tritonclient",
         "openvino", "nncf"}
# layer -> the top-level modules and packages of sskd_deploy in it, lowest layer first
LAYERS: dict[str, set[str]] = {
    "base": {"__init__", "errors", "io", "provenance", "structures", "spec", "segmentation", "preprocess", "config",
             "weights"},
    "data": {"data"},
    "evaluation": {"evaluation"},
    "models": {"models"},
    "training": {"training"},
    "deploy": {"export", "runtime", "serving"},
    "measure": {"bench", "report"},
    "commands": {"commands"},
    "cli": {"cli", "__main__"},
}
RANK = {layer: i for i, layer in enumerate(LAYERS)}
TOP_LAYER = {top: layer for layer, tops in LAYERS.items() for top in tops}
NO_HEAVY = {"base", "data", "evaluation"}  # pure data and numpy: importable without torch or a runtime

# narrower rules inside and across layers: top-level name -> (sskd_deploy names it must not import, libraries)
FORBIDDEN: dict[str, tuple[set[str], set[str]]] = {
    "models": (set(), {"tensorrt", "torch_tensorrt", "tritonclient", "onnxruntime"}),
    "training": (set(), {"tensorrt", "tritonclient"}),
    "export": ({"serving"}, {"tritonclient"}),
    "runtime": ({"export", "serving"}, set()),
    # a serving host runs the client and the generated repository without the model code
    "serving": ({"models", "training", "export"}, {"torch", "transformers"}),
    "bench": ({"training", "report"}, set()),
    # the report reads what every step wrote and may run the model, but never trains or serves
    "report": ({"training", "serving"}, set()),
}


def top_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def layer_of(path: Path) -> str:
    return TOP_LAYER[top_of(path)]


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: use absolute imports (sskd_deploy....)")
    return found


def violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top, layer = top_of(path), layer_of(path)
        banned_internal, banned_external = FORBIDDEN.get(top, (set(), set()))
        if layer in NO_HEAVY:
            banned_external = banned_external | HEAVY
        for lineno, module in imports_of(path):
            parts = module.split(".")
            where = f"{path.relative_to(PACKAGE.parent)}:{lineno}: {layer} ({top}) imports {module}"
            if parts[0] == "sskd_deploy" and len(parts) > 1:
                target = TOP_LAYER.get(parts[1])
                if target is None or RANK[target] > RANK[layer] or parts[1] in banned_internal:
                    problems.append(where)
            elif parts[0] in banned_external:
                problems.append(where)
    return problems


def test_no_forbidden_imports() -> None:
    assert violations() == []


def test_checker_catches_a_forbidden_edge(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "sskd_deploy"
    for folder in ("data", "config", "runtime", "serving"):
        (fake / folder).mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("import torch\nfrom sskd_deploy.training import loop\n")
    (fake / "config" / "bad.py").write_text("def f():\n    from sskd_deploy.models.checkpoint import read_checkpoint\n")
    (fake / "runtime" / "bad.py").write_text("from sskd_deploy.bench import latency\nimport sskd_deploy.export.int8\n")
    (fake / "serving" / "bad.py").write_text("from sskd_deploy.runtime import base\nimport torch\n")
    (fake / "stray.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    monkeypatch.setitem(TOP_LAYER, "stray", "base")
    found = violations()
    assert len(found) == 6, found
    assert sum("data (data) imports" in f for f in found) == 2  # torch, and training above it
    assert any("base (config) imports sskd_deploy.models" in f for f in found)  # inside a function too
    assert any("deploy (runtime) imports sskd_deploy.bench" in f for f in found)  # a higher layer
    assert any("deploy (runtime) imports sskd_deploy.export" in f for f in found)  # a narrower rule
    assert any("deploy (serving) imports torch" in f for f in found)


def test_every_module_is_in_exactly_one_layer() -> None:
    """A new top-level module or package must be placed in a layer; a moved one renamed here."""
    tops = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    assert tops == set(TOP_LAYER)
    assert sum(len(t) for t in LAYERS.values()) == len(TOP_LAYER)
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert len(modules) <= 12, sorted(modules)


@pytest.mark.parametrize("module", ["sskd_deploy.cli", "sskd_deploy.config", "sskd_deploy.config.model",
                                    "sskd_deploy.evaluation", "sskd_deploy.data.layout",
                                    "sskd_deploy.evaluation.postprocess", "sskd_deploy.evaluation.prediction"])
def test_base_data_and_evaluation_load_without_torch(module: str) -> None:
    code = f"import sys, {module}; bad = [m for m in {sorted(HEAVY)!r} if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_import_is_light() -> None:
    code = "import sys, sskd_deploy.cli; assert 'numpy' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def module_graph(package: Path) -> dict[str, set[str]]:
    """Every module of ``package`` (dotted, a package by its name) -> the package's modules it imports,
    at module level or inside functions. ``from a.b import c`` counts as an import of ``a.b.c``
    when that is a module, else of ``a.b``. Importing a submodule runs its parent package's
    ``__init__``; that implicit step is how packages work and is not an edge."""
    files = {}
    for path in package.rglob("*.py"):
        parts = (package.name, *path.relative_to(package).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in sorted(files.items()):
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module
                           for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in files and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]`` when it has none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return []
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return []

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return []


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = module_graph(PACKAGE)
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))
    run = graph["sskd_deploy.commands.run"]
    assert {"sskd_deploy.commands.bench", "sskd_deploy.commands.export"} <= run  # function-level imports count
    commands = {n for n in graph if n.startswith("sskd_deploy.commands.")}
    assert not graph["sskd_deploy.commands.tables"] & commands, "the shared tables print; they call no command"


def test_cycle_checker_catches_a_cycle(tmp_path) -> None:
    fake = tmp_path / "sskd_deploy" / "commands"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text("from sskd_deploy.commands.b import f\n")
    (fake / "b.py").write_text("def f():\n    from sskd_deploy.commands import c\n")
    (fake / "c.py").write_text("import sskd_deploy.commands.a\n")
    (fake / "d.py").write_text("from sskd_deploy.commands.a import g\n")
    graph = module_graph(fake.parent)
    short = {k.removeprefix("sskd_deploy.commands."): {v.removeprefix("sskd_deploy.commands.") for v in vs}
             for k, vs in graph.items() if k.startswith("sskd_deploy.commands.")}
    assert short == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["sskd_deploy.commands.a", "sskd_deploy.commands.b", "sskd_deploy.commands.c",
                                 "sskd_deploy.commands.a"]
    (fake / "c.py").write_text("")
    assert find_cycle(module_graph(fake.parent)) == []
