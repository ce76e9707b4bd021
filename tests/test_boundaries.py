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
    source = "import napari.layers\nfrom qtpy import QtCore\nimport importlib\nimportlib.import_module('magicgui')\n"
    assert imported_top_levels(source) >= {"napari", "qtpy", "magicgui"}
    assert imported_top_levels("from . import slide\nfrom .slide import open_slide\n") == set()
