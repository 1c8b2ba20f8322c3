"""Repoint include paths baked into the ROS 2 wheels' exported CMake targets.

The wheels were built in a manylinux image whose Python lived in /opt/python/cp3XX-cp3XX (the wheel's
own version: cp311 for Python 3.11, cp312 for 3.12, checked on ros-builtin-interfaces 2.3.0); their
`*__rosidl_generator_pyExport.cmake` files still name its Python and numpy include folders, which
do not exist here, and CMake's generate step rejects imported targets with non-existent include
paths. Point them at this interpreter's folders. Idempotent; touches only files under the venv.
"""

import pathlib
import sys
import sysconfig

import numpy

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
BUILD_PREFIX = f"/opt/python/{TAG}-{TAG}"
REPLACEMENTS = {
    f"{BUILD_PREFIX}/include/python{VERSION}": sysconfig.get_paths()["include"],
    f"{BUILD_PREFIX}/lib/python{VERSION}/site-packages/numpy/_core/include": numpy.get_include(),
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
