"""The workspace the README's install section builds, built the way a robot builds it.

A scratch colcon workspace with the README's layout (`src/pop_ros` = this repository,
`src/pop_ros_interfaces` a symlink into it, `venv` holding `COLCON_IGNORE`) is built by colcon from
requirements.txt, run as `python -m colcon build --symlink-install` from this venv, against this
venv's ROS 2 wheels (here the underlay that `source /opt/ros/<distro>/setup.bash` gives a robot).
Then the installed files are checked and the installed `pop_node` is started from
`install/setup.bash` until it answers `list_support_sets`.

The workspace stays in `build/colcon_test/` and only changed source files are copied into it, so
later runs rebuild only what changed. The interface package's C and C++ type support is compiled
through the Makefile's compiler cache (ccache in `build/ccache`), which `make setup`'s own build of
the same sources has filled: a fresh clone compiles them once, not twice (the generators and the
links still run). A run whose sources and
venv are those of the last successful build does not build again (`build.stamp`, a digest of them):
the tests check that build's install tree and log. `POP_ROS_COLCON_REBUILD=1` builds anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pop_ros.paths import SOURCE_ROOT

pytestmark = [pytest.mark.timeout(1500), pytest.mark.slow]  # the first build compiles the interface package

WORKSPACE = SOURCE_ROOT / "build" / "colcon_test"
VENV = pathlib.Path(sys.prefix)
TOOLS = {"pop_node", "pop-point", "pop-find-heads", "pop-eval", "pop-bench", "pop-bag", "pop-teach", "find-handle-tree"}
# Never copied into the workspace: outputs, environments, caches (and what .gitignore ignores).
SKIPPED_DIRS = {".git", ".venv", "build", "install", "log", "demo_out", "bench_out", "eval_out", "__pycache__"}


def source_files() -> list[pathlib.Path]:
    """The files a clone of this working tree holds, relative to its root (tracked and new ones)."""
    if (SOURCE_ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=SOURCE_ROOT, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
        names = [pathlib.Path(name) for name in listed.split("\0") if name]
    else:  # an exported tree without git
        names = []
        for folder, dirs, files in os.walk(SOURCE_ROOT):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
            names += [pathlib.Path(folder, f).relative_to(SOURCE_ROOT) for f in files]
    return [name for name in names if (SOURCE_ROOT / name).is_file()]  # deleted but not yet staged


def sync_tree(destination: pathlib.Path) -> None:
    """Make `destination` hold exactly the source files, rewriting only those whose bytes differ so
    that unchanged files keep their times and colcon and CMake rebuild only what changed."""
    wanted = set(source_files())
    for name in sorted(wanted):
        source, target = SOURCE_ROOT / name, destination / name
        if target.is_file() and not target.is_symlink() and target.read_bytes() == source.read_bytes():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    for folder, _dirs, files in os.walk(destination):
        for file_name in files:
            path = pathlib.Path(folder, file_name)
            if path.relative_to(destination) not in wanted:
                path.unlink()


def underlay_environment() -> dict[str, str]:
    """This process's environment with the venv as the only ROS underlay and the venv activated."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH", "PYTHONPATH", "COLCON_HOME"}
    }
    env.update(
        VIRTUAL_ENV=str(VENV),  # what `source venv/bin/activate` sets: CMake's FindPython3 then picks it
        PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        AMENT_PREFIX_PATH=str(VENV),  # on a robot: from `source /opt/ros/<distro>/setup.bash`
        CMAKE_PREFIX_PATH=str(VENV),
        COLCON_HOME=str(WORKSPACE / "colcon_home"),  # no developer colcon defaults or mixins
    )
    # colcon passes make `-l<cores>` unless MAKEFLAGS is set: on a shared machine whose load average
    # is above the core count, that serialises the interface package's compile.
    env.setdefault("MAKEFLAGS", f"-j{os.cpu_count() or 1}")
    env.update(compiler_cache_environment())
    return env


def compiler_cache_environment() -> dict[str, str]:
    """The Makefile's compiler cache (its CCACHE_ENV), given to CMake through the environment so that the
    command stays the README's: the interface package's objects, compiled by `make setup` from the same
    generated sources, are found there instead of compiled again. Without ccache in the venv: nothing."""
    ccache = VENV / "bin" / "ccache"
    if not ccache.is_file():
        return {}
    return {
        "CMAKE_C_COMPILER_LAUNCHER": str(ccache),  # CMake >= 3.17 reads these two from the environment
        "CMAKE_CXX_COMPILER_LAUNCHER": str(ccache),
        "CCACHE_DIR": str(SOURCE_ROOT / "build" / "ccache"),
        "CCACHE_BASEDIR": str(SOURCE_ROOT / "build"),  # build-folder paths hashed relative: both builds match
    }


def run(command: list[str], log: pathlib.Path, timeout: float) -> subprocess.CompletedProcess:
    with open(log, "w") as output:
        completed = subprocess.run(
            command, cwd=WORKSPACE, env=underlay_environment(), stdout=output, stderr=subprocess.STDOUT,
            timeout=timeout, check=False,
        )  # fmt: skip
    return completed


@contextlib.contextmanager
def workspace_lock():
    """Two test sessions of one checkout must not build the same workspace at once."""
    WORKSPACE.mkdir(parents=True, exist_ok=True)
    with open(WORKSPACE.parent / "colcon_test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_inputs_digest() -> str:
    """What the build depends on: every source file (name and bytes), this interpreter, and the venv's
    installed distributions (their dist-info names carry the versions)."""
    digest = hashlib.sha256(f"{sys.version}\0{VENV}\0".encode())
    for name in sorted(source_files()):
        digest.update(f"{name}\0".encode() + (SOURCE_ROOT / name).read_bytes() + b"\0")
    for site in sorted(VENV.glob("lib/python*/site-packages")):
        digest.update("\0".join(sorted(p.name for p in site.glob("*.dist-info"))).encode())
    return digest.hexdigest()


# A build of unchanged inputs is not repeated: the stamp holds the digest of the last successful build,
# whose install tree and log the tests then check (POP_ROS_COLCON_REBUILD=1 builds anyway).
BUILD_STAMP = WORKSPACE / "build.stamp"


def build_is_current(digest: str) -> bool:
    installed = all((WORKSPACE / "install" / package).is_dir() for package in ("pop_ros", "pop_ros_interfaces"))
    return (
        os.environ.get("POP_ROS_COLCON_REBUILD", "") in ("", "0")
        and installed
        and (WORKSPACE / "build.log").is_file()
        and BUILD_STAMP.is_file()
        and BUILD_STAMP.read_text() == digest
    )


@pytest.fixture(scope="module")
def workspace():
    """The README's steps: the layout, `touch venv/COLCON_IGNORE`, `python -m colcon build --symlink-install`
    (not repeated while the sources and the venv are those of the last successful build)."""
    with workspace_lock():
        (WORKSPACE / "src").mkdir(parents=True, exist_ok=True)
        sync_tree(WORKSPACE / "src" / "pop_ros")
        interfaces_link = WORKSPACE / "src" / "pop_ros_interfaces"
        if not interfaces_link.is_symlink():
            interfaces_link.symlink_to("pop_ros/pop_ros_interfaces")  # ln -s pop_ros/pop_ros_interfaces ...
        venv_link = WORKSPACE / "venv"
        if not venv_link.is_symlink():
            venv_link.symlink_to(VENV)  # the README's venv inside the workspace
        (venv_link / "COLCON_IGNORE").touch()
        listed = run([sys.executable, "-m", "colcon", "list", "--topological-order"], WORKSPACE / "list.log", 120)
        digest = build_inputs_digest()
        if build_is_current(digest):
            print("colcon build --symlink-install: not repeated, the inputs are those of the last successful build")
        else:
            BUILD_STAMP.unlink(missing_ok=True)
            started = time.monotonic()
            built = run([sys.executable, "-m", "colcon", "build", "--symlink-install"], WORKSPACE / "build.log", 1200)
            build_seconds = time.monotonic() - started
            log = (WORKSPACE / "build.log").read_text()
            assert built.returncode == 0, f"colcon build failed after {build_seconds:.0f} s:\n{log[-6000:]}"
            print(f"colcon build --symlink-install: {build_seconds:.1f} s")
            BUILD_STAMP.write_text(digest)
        log = (WORKSPACE / "build.log").read_text()
        yield {"list": (WORKSPACE / "list.log").read_text(), "list_rc": listed.returncode, "build_log": log}


def test_colcon_finds_both_packages_in_dependency_order_and_skips_the_venv(workspace):
    assert workspace["list_rc"] == 0, workspace["list"]
    rows = [line.split("\t") for line in workspace["list"].splitlines() if "\t" in line]
    # The venv (symlinked into the workspace) holds the wheels' share/*/package.xml: COLCON_IGNORE hides them.
    assert [(name, path, kind) for name, path, kind in rows] == [
        ("pop_ros_interfaces", "src/pop_ros_interfaces", "(ros.ament_cmake)"),
        ("pop_ros", "src/pop_ros", "(ros.ament_python)"),
    ]


def test_symlink_install_links_the_sources(workspace):
    """With setuptools >= 80 colcon falls back to copying (`develop --editable` is gone): edits in
    src/ would then silently not reach the installed package."""
    assert "falling back" not in workspace["build_log"], workspace["build_log"][-3000:]
    package_link = WORKSPACE / "build" / "pop_ros" / "pop_ros"
    assert package_link.is_symlink()
    assert package_link.resolve() == (WORKSPACE / "src" / "pop_ros" / "pop_ros").resolve()
    assert (WORKSPACE / "install" / "pop_ros" / "share" / "pop_ros" / "config" / "pop_ros.yaml").is_symlink()


def test_installed_executables_are_the_readme_tools_with_the_venv_shebang(workspace):
    """`ros2 run pop_ros <tool>` runs lib/pop_ros/<tool>; its shebang must be the venv's Python, or
    torch (installed only in the venv) does not import."""
    lib = WORKSPACE / "install" / "pop_ros" / "lib" / "pop_ros"
    installed = {path.name for path in lib.iterdir()}
    pages = [SOURCE_ROOT / "README.md", *sorted((SOURCE_ROOT / "docs").glob("*.md"))]
    readme_tools = {tool for page in pages for tool in re.findall(r"ros2 run pop_ros ([\w-]+)", page.read_text())}
    assert installed == TOOLS
    assert readme_tools == TOOLS, f"README and docs/ show {sorted(readme_tools)} with ros2 run"
    for tool in sorted(TOOLS):
        script = lib / tool
        assert os.access(script, os.X_OK), script
        shebang = script.read_text().splitlines()[0]
        assert shebang.startswith("#!") and pathlib.Path(shebang[2:]).parent == VENV / "bin", (tool, shebang)


def test_share_files_and_ament_index_markers(workspace):
    install = WORKSPACE / "install"
    share = install / "pop_ros" / "share" / "pop_ros"
    shipped = ("config/pop_ros.yaml", "config/pop_ros.rviz", "config/fastdds_large_images.xml")
    for relative in ("package.xml", "launch/pop_ros.launch.py", *shipped):
        assert (share / relative).is_file(), relative
    library_path = share / "config" / "supports" / "library.yaml"
    library = yaml.safe_load(library_path.read_text())
    images = [exemplar["image"] for entry in library["sets"].values() for exemplar in entry["exemplars"]]
    assert images and all((library_path.parent / image).is_file() for image in images)
    for package in ("pop_ros", "pop_ros_interfaces"):
        marker = install / package / "share" / "ament_index" / "resource_index" / "packages" / package
        assert marker.is_file(), marker
    # Every interface of the source is registered in the installed index and generated for Python.
    source_interfaces = {
        f"{path.parent.name}/{path.name}"
        for path in (WORKSPACE / "src" / "pop_ros_interfaces").glob("*/*")
        if path.suffix in {".msg", ".srv"}
    }
    index = install / "pop_ros_interfaces" / "share" / "ament_index" / "resource_index" / "rosidl_interfaces"
    registered = set((index / "pop_ros_interfaces").read_text().split())
    assert source_interfaces and source_interfaces <= registered
    python_dirs = list((install / "pop_ros_interfaces" / "lib").glob("python3*/site-packages/pop_ros_interfaces"))
    assert len(python_dirs) == 1 and (python_dirs[0] / "srv" / "__init__.py").is_file()


def sourced(command: str) -> list[str]:
    """`command` run in a shell that sourced the workspace, as a user's terminal does."""
    return ["bash", "-c", f"source {WORKSPACE / 'install' / 'setup.bash'} && {command}"]


def test_sourced_workspace_resolves_its_own_packages(workspace):
    """After `source install/setup.bash`, Python imports pop_ros and the interfaces from the workspace
    (not from the developer install in the venv) and finds the shared files through the ament index."""
    probe = (
        "import pop_ros, pop_ros_interfaces.srv; from pop_ros.paths import share_dir; "
        "print(pop_ros.__file__); print(pop_ros_interfaces.srv.__file__); print(share_dir())"
    )
    completed = subprocess.run(
        sourced(f"python -c '{probe}'"),
        cwd=WORKSPACE, env=underlay_environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    package_file, interfaces_file, share = completed.stdout.split()
    assert pathlib.Path(package_file).is_relative_to(WORKSPACE / "build" / "pop_ros")
    assert pathlib.Path(interfaces_file).is_relative_to(WORKSPACE / "install" / "pop_ros_interfaces")
    assert pathlib.Path(share) == WORKSPACE / "install" / "pop_ros" / "share" / "pop_ros"


def test_installed_node_serves_the_shipped_support_library(workspace, tmp_path):
    """What `ros2 run pop_ros pop_node --ros-args --params-file ... -p support_library:=...` starts
    (ros2cli is not a pip wheel: the executable it would run is started directly)."""
    from pop_ros.clients.ros_client import RosClient
    from pop_ros_interfaces.srv import ListSupportSets

    share = WORKSPACE / "install" / "pop_ros" / "share" / "pop_ros"
    node = WORKSPACE / "install" / "pop_ros" / "lib" / "pop_ros" / "pop_node"
    command = (
        f"exec {node} --ros-args --params-file {share / 'config' / 'pop_ros.yaml'} -p preset:=tiny "
        f"-p support_library:={share / 'config' / 'supports' / 'library.yaml'} -r __ns:=/colcon_test"
    )
    log_path = tmp_path / "pop_node.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            sourced(command), cwd=WORKSPACE, env=underlay_environment(), stdout=log, stderr=subprocess.STDOUT
        )
    client = RosClient("colcon_test_client")
    try:
        # The service exists from the start; it lists the sets once autostart has configured the node.
        deadline, names = time.monotonic() + 240, []
        while not names and time.monotonic() < deadline and process.poll() is None:
            try:
                service = "/colcon_test/pop_node/list_support_sets"
                names = list(client.call(ListSupportSets, service, ListSupportSets.Request(), timeout=10).names)
            except TimeoutError:
                pass
            if not names:
                time.sleep(1.0)
        # The README's service call next to its `ros2 run` line uses this set.
        assert "mug_handle" in names, f"installed pop_node answered {names}:\n{log_path.read_text()[-4000:]}"
    finally:
        client.close()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            returncode = process.wait()
    assert returncode == 0, log_path.read_text()[-3000:]
