"""The longest classes and functions of a package, by source lines (`ast`):
`python tools/longest_definitions.py [pop_ros] [N]` prints the N longest of each (default 5)."""

from __future__ import annotations

import ast
import pathlib
import sys


def lengths(package: pathlib.Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(classes, functions) as (lines, "path:name"), longest first."""
    classes, functions = [], []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                entry = (node.end_lineno - node.lineno + 1, f"{path}:{node.name}")
                (classes if isinstance(node, ast.ClassDef) else functions).append(entry)
    return sorted(classes, reverse=True), sorted(functions, reverse=True)


def main() -> int:
    package = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "pop_ros")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for title, items in zip(("classes", "functions"), lengths(package), strict=True):
        print(f"{title}: " + ", ".join(f"{name} {lines}" for lines, name in items[:count]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
