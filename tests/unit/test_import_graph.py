"""No import cycles among the project's modules, counting every import a module can run (at its top, in a
class or function body), and none made only for type checkers (``if TYPE_CHECKING:``); and the layering rule:
``server/`` and ``engine/frontend/`` never import ``engine/worker/``, which runs inside vLLM's worker."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "server", "schemas")
ABOVE_WORKER = ("server", "engine.frontend")
WORKER = "engine.worker"
# vLLM takes the logits-processor class itself, so the front end names the worker's adapter in this one function
PROCESSOR_LOOKUP = ("engine.frontend.client", "logits_processor_for_runner")


def _modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, (ast.Name, ast.Attribute)) and \
        getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"


def _imports(tree: ast.AST, known: set[str]) -> set[str]:
    """Our modules that ``tree`` imports anywhere outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if _type_checking_only(node):
            pending += node.orelse
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        pending += ast.iter_child_nodes(node)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(ast.parse(path.read_text()), set(modules)) - {name} for name, path in modules.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as the modules along it (first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(edges[name]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[name] = 2
        path.pop()
        return None

    for name in sorted(edges):
        if name not in state and (found := visit(name)):
            return found
    return None


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layering_violations(root: Path = ROOT) -> list[str]:
    """``path:line module`` for each import of the worker by ``server/`` or ``engine/frontend/`` under
    ``root``, type-only ones included, outside the processor-class lookup."""
    found = []
    for name, path in sorted(_modules(root).items()):
        if not any(_within(name, package) for package in ABOVE_WORKER):
            continue
        tree = ast.parse(path.read_text())
        allowed = [range(node.lineno, node.end_lineno + 1) for node in ast.walk(tree)
                   if isinstance(node, ast.FunctionDef) and (name, node.name) == PROCESSOR_LOOKUP]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            if any(node.lineno in lines for lines in allowed):
                continue
            found += [f"{path.relative_to(root)}:{node.lineno} {target}" for target in targets
                      if _within(target, WORKER)]
    return found


def test_the_finder_sees_a_cycle_through_a_function_level_import():
    tree = ast.parse("import engine.b\ndef f():\n    from engine.a import x\nif TYPE_CHECKING:\n    import engine.c\n")
    assert _imports(tree, {"engine.a", "engine.a.x", "engine.b", "engine.c"}) == {"engine.a", "engine.a.x",
                                                                                 "engine.b"}
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    edges = graph()
    assert len(edges) > 40 and "engine.worker.span_grammar" in edges["engine.worker.runner_v1"]
    assert cycle(edges) is None, " -> ".join(cycle(edges))


def test_the_layering_rule_catches_a_planted_import(tmp_path):
    modules = {
        "engine/worker/runner_v1.py": "class ChameleonSpanLogitsProcessorV1: ...\n",
        "engine/frontend/client.py": "from engine.worker.guidance import Guidance\n"
                                     "def logits_processor_for_runner():\n"
                                     "    from engine.worker.runner_v1 import ChameleonSpanLogitsProcessorV1\n",
        "engine/frontend/splitter.py": "import torch\n\n\ndef split():\n    from engine import worker\n",
        "server/app.py": "from engine.frontend.client import logits_processor_for_runner\n"
                         "if TYPE_CHECKING:\n    import engine.worker.runner_v1\n",
    }
    for relative, text in modules.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    assert layering_violations(tmp_path) == ["engine/frontend/client.py:1 engine.worker.guidance.Guidance",
                                             "engine/frontend/splitter.py:5 engine.worker",
                                             "server/app.py:3 engine.worker.runner_v1"]


def test_server_and_frontend_never_import_the_worker():
    assert layering_violations() == []
