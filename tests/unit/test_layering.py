"""The dependency direction of DESIGN.md section 2, enforced on the source.

Every import statement counts, including the lazy ones inside functions: a lazy import hides a
dependency from start-up time, not from the architecture. Only the application layer (cli, and
the commands package it calls) may reach everything; only cli and commands import commands, and
the command modules import one another without a cycle.
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
CORE = {"errors", "io", "provenance", "structures", "spec", "segmentation", "preprocess", "postprocess",
        "evaluation", "prediction", "config", "data", "weights"}
LAYERS = {"models", "training", "export", "runtime", "serving", "bench", "report", "cli", "commands"}

# layer -> sskd_deploy subpackages/modules it must not import; plus whether heavy libraries are allowed
FORBIDDEN: dict[str, tuple[set[str], set[str]]] = {
    "core": (LAYERS, HEAVY),
    "models": (LAYERS - {"models"}, {"tensorrt", "torch_tensorrt", "tritonclient", "onnxruntime"}),
    "training": ({"export", "serving", "runtime", "bench", "report", "cli", "commands"},
                 {"tensorrt", "tritonclient"}),
    "export": ({"training", "serving", "bench", "report", "cli", "commands"}, {"tritonclient"}),
    "runtime": ({"training", "export", "serving", "bench", "report", "cli", "commands"}, set()),
    "serving": ({"models", "training", "export", "bench", "report", "cli", "commands"},
                {"torch", "transformers"}),
    "bench": ({"training", "report", "cli", "commands"}, set()),
    # the report reads what every step wrote and may run the model, but never trains or drives the CLI
    "report": ({"training", "serving", "cli", "commands"}, set()),
    # the command modules are what the CLI calls, never the other way round
    "commands": ({"cli"}, set()),
}


def layer_of(path: Path) -> str:
    top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if top in CORE or top == "__init__":
        return "core"
    return top


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
        layer = layer_of(path)
        if layer not in FORBIDDEN:
            continue
        banned_internal, banned_external = FORBIDDEN[layer]
        for lineno, module in imports_of(path):
            parts = module.split(".")
            if parts[0] == "sskd_deploy" and len(parts) > 1 and parts[1] in banned_internal:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{lineno}: {layer} imports {module}")
            if parts[0] in banned_external:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{lineno}: {layer} imports {module}")
    return problems


def test_no_forbidden_imports() -> None:
    assert violations() == []


def test_checker_catches_a_forbidden_edge(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "sskd_deploy"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "bad.py").write_text("import torch\nfrom sskd_deploy.training import loop\n")
    (fake / "config").mkdir()
    (fake / "config" / "bad.py").write_text("from sskd_deploy.models.checkpoint import read_checkpoint\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = violations()
    assert len(found) == 3 and all("core imports" in f for f in found)


def test_core_names_exist() -> None:
    """Every CORE and LAYERS name is a module or package of sskd_deploy (a moved module must be renamed here)."""
    missing = [n for n in sorted(CORE | LAYERS) if not (PACKAGE / f"{n}.py").is_file() and not (PACKAGE / n).is_dir()]
    assert missing == []


@pytest.mark.parametrize("module", ["sskd_deploy.cli", "sskd_deploy.config", "sskd_deploy.config.model", "sskd_deploy.evaluation",
                                    "sskd_deploy.data.layout", "sskd_deploy.postprocess"])
def test_core_modules_load_without_torch(module: str) -> None:
    code = f"import sys, {module}; bad = [m for m in {sorted(HEAVY)!r} if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_import_is_light() -> None:
    code = "import sys, sskd_deploy.cli; assert 'numpy' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


COMMANDS = "sskd_deploy.commands"


def command_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``sskd_deploy.commands`` it imports (module-level and inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((package / "commands").glob("*.py")):
        name = path.stem
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == COMMANDS:  # from sskd_deploy.commands import x
                targets = [f"{COMMANDS}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            else:
                continue
            edges.update(t.split(".")[2] for t in targets if t.startswith(COMMANDS + ".") and t.split(".")[2] != name)
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


def test_command_modules_import_each_other_without_a_cycle() -> None:
    graph = command_graph(PACKAGE)
    assert {"run", "bench", "serve", "export", "tables"} <= graph.keys()
    assert graph["run"] >= {"bench", "export"}  # the graph sees function-level imports too
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))
    assert graph["tables"] == set(), "the shared tables module prints; it calls no command"


def test_cycle_checker_catches_a_cycle(tmp_path) -> None:
    fake = tmp_path / "sskd_deploy" / "commands"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "a.py").write_text("from sskd_deploy.commands.b import f\n")
    (fake / "b.py").write_text("def f():\n    from sskd_deploy.commands import c\n")
    (fake / "c.py").write_text("import sskd_deploy.commands.a\n")
    (fake / "d.py").write_text("from sskd_deploy.commands.a import g\n")
    graph = command_graph(fake.parent)
    assert graph == {"__init__": set(), "a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    (fake / "c.py").write_text("")
    assert find_cycle(command_graph(fake.parent)) == []
