#!/bin/sh
# Print the interpreter `make` builds .venv with: the first of python3.12, python3.11 on PATH.
#
# 3.12 first: it is the Python of Ubuntu 24.04 (ROS 2 Jazzy/Kilted's platform), so a robot's
# system Python and this venv then agree; the ROS wheels (ros-*) and torch are published for both
# cp311 and cp312. 3.11 remains for machines that only have it (Debian 12, this project's CI).
# PYTHON_BOOTSTRAP, when set, wins and is only checked for its version.
set -u
SUPPORTED="3.12 3.11"

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
    echo "error: PYTHON_BOOTSTRAP=$PYTHON_BOOTSTRAP is $what; pop_ros needs Python 3.12 or 3.11" >&2
    exit 1
fi
for version in $SUPPORTED; do
    candidate="python$version"
    if [ "$(version_of "$candidate")" = "$version" ]; then
        echo "$candidate"
        exit 0
    fi
done
echo "error: neither python3.12 nor python3.11 is on PATH; install one (Ubuntu 24.04: sudo apt install python3.12-venv) or run make PYTHON_BOOTSTRAP=/path/to/python3.12" >&2
exit 1
