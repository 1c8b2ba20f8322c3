#!/bin/sh
# Print the interpreter `make` builds .venv with: the first of python3.11, python3.12 on PATH.
#
# Ubuntu 24.04 (ROS 2 Jazzy/Kilted's platform) has only 3.12, Debian 12 only 3.11; the ROS wheels
# (ros-*) and the pinned torch are published for both cp311 and cp312. Where both exist, 3.11 first:
# it is the environment this project's CI tests, and there the pinned torch resolves to its CPU
# build, where PyPI's cp312 torch for Linux is the multi-GB CUDA build.
# PYTHON_BOOTSTRAP, when set, wins and is only checked for its version.
set -u
SUPPORTED="3.11 3.12"

version_of() {  # "3.12" for a working interpreter, nothing otherwise
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

if [ -n "${PYTHON_BOOTSTRAP:-}" ]; then
    found=$(version_of "$PYTHON_BOOTSTRAP")
    case " $SUPPORTED " in
        *" $found "*) echo "$PYTHON_BOOTSTRAP"; exit 0 ;;
    esac
    what="not a working interpreter"
    [ -n "$found" ] && what="Python $found"
    echo "error: PYTHON_BOOTSTRAP=$PYTHON_BOOTSTRAP is $what; pop_ros needs Python 3.11 or 3.12" >&2
    exit 1
fi
for version in $SUPPORTED; do
    candidate="python$version"
    if [ "$(version_of "$candidate")" = "$version" ]; then
        echo "$candidate"
        exit 0
    fi
done
echo "error: neither python3.11 nor python3.12 is on PATH; install one (Ubuntu 24.04: sudo apt install python3.12-venv) or run make PYTHON_BOOTSTRAP=/path/to/python3.12" >&2
exit 1
