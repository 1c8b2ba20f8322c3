"""The package's layout holds its layers: no import circles among pop_ros modules (tools/import_circles.py
reads every import from the source, module-level or inside a function)."""

from __future__ import annotations

import importlib.util
import pathlib

from pop_ros.paths import SOURCE_ROOT


def _import_circles():
    spec = importlib.util.spec_from_file_location("import_circles", SOURCE_ROOT / "tools" / "import_circles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_circle_finder_sees_a_circle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub import b  # a package importing its own module\n")
    (package / "a.py").write_text("from pkg.sub.b import thing\n")
    (package / "sub" / "b.py").write_text("def thing():\n    from .. import a\n    return a\n")
    (package / "c.py").write_text("import pkg.a\n")
    assert _import_circles().circles(package) == [["pkg.a", "pkg.sub.b"]]


def test_pop_ros_has_no_import_circles():
    circles = _import_circles().circles(pathlib.Path(SOURCE_ROOT) / "pop_ros")
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(group) for group in circles)
