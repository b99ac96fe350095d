"""The house rules of ``core/``: imports flow one way, math hooks nothing, pages stay thin, units stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.recipe.steps import STEPS

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "core"
# pure tensor math: tensors in, tensors out; nothing here may reach a model's forward
MATH_MODULES = ("core.calibration.hessian", "core.prune.masks", "core.prune.sparsegpt", "core.quantize.gptq",
                "core.quantize.scheme", "core.distill.loss", "core.prune.structured.scores")
HOOKING_MODULES = ("core.calibration.walk", "core.calibration.observe")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
LONG_REASON = "# long because"  # a comment inside a longer function that says why it is not split


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_names(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of every import that runs: top level and inside functions, not under TYPE_CHECKING."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def core_imports(name: str) -> set[str]:
    """The core modules that importing ``name`` runs: each target and the packages above it, less its own."""
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} | {name}
    targets: set[str] = set()
    for module, names in imported_names(ast.parse(MODULES[name].read_text())):
        if module != "core" and not module.startswith("core."):
            continue
        candidates = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES] or [module]
        for target in candidates:
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {t for t in targets if t in MODULES and t not in own}


GRAPH = {name: core_imports(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_graph_of_core_has_no_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", MATH_MODULES)
def test_math_modules_reach_no_model_hooks(name):
    assert name in MODULES
    assert not reachable(name) & set(HOOKING_MODULES), f"{name} imports a module that hooks a model"
    assert "register_forward" not in MODULES[name].read_text()


def test_only_the_calibration_package_registers_forward_hooks():
    hooking = [name for name, path in MODULES.items() if ".register_forward" in path.read_text()]
    assert hooking and all(name.startswith("core.calibration.") for name in hooking), hooking


def test_core_never_imports_streamlit():
    users = [name for name, path in MODULES.items()
             if any(m.split(".")[0] == "streamlit" for m, _ in imported_names(ast.parse(path.read_text())))]
    assert users == []


def _imports_of(path: Path) -> list[str]:
    return [module for module, _ in imported_names(ast.parse(path.read_text()))]


@pytest.mark.parametrize("page", sorted((ROOT / "pages").glob("*.py")), ids=lambda p: p.name)
def test_pages_import_only_ui_and_cores_public_api(page):
    engine = [m for m in _imports_of(page) if m.split(".")[0] == "core" and m != "core"]
    assert engine == [], f"{page.name} reaches into engine internals: {engine}; import them from `core`"


@pytest.mark.parametrize("module", sorted((ROOT / "ui").glob("*.py")), ids=lambda p: p.name)
def test_ui_imports_core_packages_never_their_inner_modules(module):
    deep = [m for m in _imports_of(module) if m.split(".")[0] == "core" and m.count(".") > 1]
    assert deep == [], f"{module.name} imports engine internals {deep}; use `core` or a package's own API"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines; split it (at most {MAX_MODULE_LINES})"


def test_functions_stay_short_or_say_why():
    long = []
    for name, path in MODULES.items():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = lines[node.lineno - 1: node.end_lineno]
                if len(body) > MAX_FUNCTION_LINES and not any(LONG_REASON in line for line in body):
                    long.append(f"{name}.{node.name} ({len(body)} lines)")
    assert long == [], long


def test_one_set_of_validators():
    definitions = [name for name, path in MODULES.items()
                   if "def _require" in path.read_text() or "def require(" in path.read_text()]
    assert definitions == ["core.checks"]


@pytest.mark.parametrize("kind", sorted(STEPS))
def test_every_step_kind_offers_the_technique_surface(kind):
    step = STEPS[kind]
    for member in ("from_dict", "needs_calibration", "label", "apply", "add_cli_arguments", "params_from_cli"):
        assert hasattr(step, member), f"{step.__name__} lacks {member}"
    assert isinstance(step.CLI_HELP, str) and isinstance(step.CLI_CALIBRATION, bool)
    assert step.__module__ == f"core.{kind}.step", "a technique's step class lives in core/<kind>/step.py"
