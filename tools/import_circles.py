"""Import circles among a package's modules, read from the source with `ast` (module-level imports and
imports inside functions alike): `python tools/import_circles.py [pop_ros]` prints each circle and
exits 1 when there is one. test/test_layout.py holds the package to none."""

from __future__ import annotations

import ast
import pathlib
import sys


def module_names(package: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py under `package` (a package is its __init__.py)."""
    names = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(module: str, path: pathlib.Path, known: dict[str, pathlib.Path]) -> set[str]:
    """The package's modules that `module` imports anywhere in its file (parents of itself excluded:
    importing a submodule runs its package's __init__, which is not a circle of jobs)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `from pkg.mod import function` -> pkg.mod
                name = name.rpartition(".")[0]
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
    return targets


def circles(package: pathlib.Path) -> list[list[str]]:
    """Strongly connected groups of two or more modules (Tarjan), each sorted, in a stable order."""
    known = module_names(package)
    graph = {name: sorted(imported(name, path, known)) for name, path in sorted(known.items())}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for other in graph[name]:
            if other not in index:
                visit(other)
                low[name] = min(low[name], low[other])
            elif other in stack:
                low[name] = min(low[name], index[other])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for name in graph:
        if name not in index:
            visit(name)
    return sorted(found)


def main() -> int:
    package = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "pop_ros")
    found = circles(package)
    for group in found:
        print(" <-> ".join(group))
    print(f"{len(found)} import circles in {package}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
