"""Layering: the package imports nothing heavy, and the core never imports a GUI toolkit."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import napari_care

CORE = Path(napari_care.__file__).resolve().parent / "core"
GUI_PACKAGES = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy"}
HEAVY_AT_IMPORT = {
    "torch",
    "timm",
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
}


def imported_top_levels(source: str) -> set[str]:
    """Top-level packages a module imports: import statements and literal import_module/__import__ calls."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


@pytest.mark.parametrize("module", ["napari_care", "napari_care.core"])
def test_import_is_light(module):
    code = (
        f"import sys, json; import {module}; "
        f"print(json.dumps(sorted(m for m in {sorted(HEAVY_AT_IMPORT)!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_core_modules_never_import_gui_packages():
    modules = sorted(CORE.rglob("*.py"))
    assert len(modules) >= 8 and CORE / "slide" / "handle.py" in modules
    offenders = {
        str(path.relative_to(CORE)): sorted(found)
        for path in modules
        if (found := imported_top_levels(path.read_text(encoding="utf-8")) & GUI_PACKAGES)
    }
    assert offenders == {}


def test_the_import_scan_sees_every_form():
    source = (
        "import napari.layers\nfrom qtpy import QtCore\nimport importlib\n"
        "importlib.import_module('magicgui')\n"
    )
    assert imported_top_levels(source) >= {"napari", "qtpy", "magicgui"}
    assert imported_top_levels("from . import slide\nfrom .slide import open_slide\n") == set()


# ---- the import graph: no circles, and floors imported only downwards ------------------------------------

PACKAGE = CORE.parent


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, counting every import: at the top, inside
    functions and under ``TYPE_CHECKING`` (a circle hidden behind a late import is still one)."""
    paths = {_module_name(path, package): path for path in package.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        here.split(".")[: len(here.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = resolve(name) if name.split(".")[0] == PACKAGE.name else None
                # a package's __init__ is reached on the way to every module below it: not an edge of its own
                if target and target != module and paths[target].name != "__init__.py":
                    targets.add(target)
        graph[module] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def floor(module: str) -> str:
    """``core`` (no GUI), ``napari`` (the napari boundary, ``napari_care._*``), ``cli`` or ``package``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return (
        "core"
        if parts[1] == "core"
        else "cli"
        if parts[1] == "cli"
        else "napari"
        if parts[1].startswith("_")
        else "?"
    )


def test_the_package_has_no_import_circle():
    assert import_circles(import_graph()) == []


def test_floors_import_only_downwards():
    allowed = {
        "package": set(),
        "core": {"package", "core"},
        "napari": {"package", "core", "napari"},
        "cli": {"package", "core", "cli"},
    }
    upward = sorted(
        (module, target)
        for module, targets in import_graph().items()
        for target in targets
        if floor(target) not in allowed[floor(module)]
    )
    assert upward == []


def test_the_widget_reaches_the_block_partition_going_down():
    """k travels widget -> SegmentOptions -> CARE -> the k x k block partition: a path exists, on a DAG."""
    graph = import_graph()
    seen, frontier = set(), ["napari_care._widget"]
    while frontier:
        module = frontier.pop()
        if module not in seen:
            seen.add(module)
            frontier.extend(graph[module])
    assert {
        "napari_care.core.segment",
        "napari_care.core.care_run",
        "napari_care.core.models.care_blocks",
    } <= seen
    assert "napari_care._widget" not in {
        target for module in seen - {"napari_care._widget"} for target in graph[module]
    }


def test_the_graph_walk_sees_circles_behind_late_imports(tmp_path):
    package = tmp_path / "napari_care"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("from napari_care.core.b import B\n")
    (package / "core" / "b.py").write_text("def f():\n    from napari_care.core import a\n")
    (package / "core" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    graph = import_graph(package)
    assert graph["napari_care.core.b"] == {"napari_care.core.a"} and graph["napari_care.core.c"] == {
        "napari_care.core.a"
    }
    assert import_circles(graph) == [["napari_care.core.a", "napari_care.core.b"]]
