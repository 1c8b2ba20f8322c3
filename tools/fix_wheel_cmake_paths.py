"""Repoint include paths baked into the ROS 2 wheels' exported CMake targets.

The wheels were built in a manylinux image whose Python lived in /opt/python/cp311-cp311; their
`*__rosidl_generator_pyExport.cmake` files still name its Python and numpy include folders, which
do not exist here, and CMake's generate step rejects imported targets with non-existent include
paths. Point them at this interpreter's folders. Idempotent; touches only files under the venv.
"""

import pathlib
import sys
import sysconfig

import numpy

BUILD_PREFIX = "/opt/python/cp311-cp311"
REPLACEMENTS = {
    f"{BUILD_PREFIX}/include/python3.11": sysconfig.get_paths()["include"],
    f"{BUILD_PREFIX}/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
}


def main() -> int:
    share = pathlib.Path(sys.prefix) / "share"
    changed = 0
    for path in share.rglob("*.cmake"):
        text = path.read_text()
        if BUILD_PREFIX not in text:
            continue
        for old, new in REPLACEMENTS.items():
            text = text.replace(old, new)
        path.write_text(text)
        changed += 1
    leftovers = [str(p) for p in share.rglob("*.cmake") if BUILD_PREFIX in p.read_text()]
    if leftovers:
        print(f"unknown {BUILD_PREFIX} paths remain in: {leftovers}", file=sys.stderr)
        return 1
    print(f"fix_wheel_cmake_paths: {changed} CMake files repointed under {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
