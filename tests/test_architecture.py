"""The house: no import circles, data flowing faces → engine → model → core, Qt only in napari/.

Every import is counted, function-local ones included (an AST walk over the package's files).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "maskdiffusion"
FACES = {"cli", "napari"}
LIBRARIES = {"batch", "evaluation", "dataset"}
#: What each layer of the house may import from the package (besides itself and errors).
ALLOWED = {
    "core": {"core"},
    "model": {"core", "model"},
    "geo": {"core", "geo"},
    "engine": {"core", "model"},
    "session": {"core", "geo"},
    "session_bundle": {"core", "geo", "session"},
    "batch": {"core", "model", "geo", "engine", "batch"},
    "evaluation": {"core", "model", "geo", "engine", "evaluation"},
    "dataset": {"core", "model", "geo", "engine", "batch", "session", "dataset"},
}
GUI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _top(module: str) -> str:
    """The part of the house a module is in (``python -m maskdiffusion`` is the command line)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return "cli" if top == "__main__" else top


def test_the_walk_sees_function_local_imports():
    graph = _graph()
    assert "maskdiffusion.core.prototypes" in graph["maskdiffusion.batch.tasks"], "a lazy import inside a function"
    assert len(graph) > 40


def test_no_import_circles():
    graph = _graph()
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_data_flows_from_the_faces_to_the_core():
    wrong = []
    for module, imported in _graph().items():
        top = _top(module)
        for other in imported:
            dest = _top(other)
            if dest in ("", "errors") or dest == top:
                continue
            if top in FACES:
                if dest in FACES:
                    wrong.append(f"{module} -> {other} (one face imports another)")
            elif dest not in ALLOWED.get(top, set()):
                wrong.append(f"{module} -> {other}")
    assert wrong == [], "\n".join(sorted(wrong))


def test_only_the_napari_face_imports_qt_or_napari():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        if _top(module) == "napari":
            continue
        wrong += [f"{module} -> {m}" for m in _imports(path) if m.split(".")[0] in GUI]
    assert wrong == []


def test_no_module_global_state_between_the_docks_panels():
    """The panels share one AnnotatorState; no module of the napari face keeps a registry."""
    for path in (PACKAGE / "napari").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                value = node.value
                mutable = isinstance(value, (ast.Dict, ast.List, ast.Set)) or (
                    isinstance(value, ast.Call) and getattr(value.func, "attr", getattr(value.func, "id", ""))
                    in ("WeakKeyDictionary", "WeakValueDictionary", "WeakSet", "dict", "defaultdict"))
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                targets = [t.id for t in targets if isinstance(t, ast.Name)]
                assert not mutable or all(t.isupper() or t == "__all__" for t in targets), f"{path.name}: {targets}"


def test_napari_private_api_is_touched_in_one_module_only():
    """napari's private attributes (``layer._staged_history``, ``viewer.window._qt_viewer``...)
    change between releases: only ``napari/napari_compat.py`` may reach them, so one module says
    what the plugin depends on. Any ``x._name`` outside it, where ``x`` is not ``self`` or
    ``cls``, counts."""
    wrong = []
    for path in (PACKAGE / "napari").glob("*.py"):
        if path.name == "napari_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                wrong.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert wrong == []
    compat = (PACKAGE / "napari" / "napari_compat.py").read_text(encoding="utf-8")
    assert "_staged_history" in compat and "_qt_viewer" in compat, "the check looks where the private API is"
