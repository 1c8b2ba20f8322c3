"""Shared fixtures: tiny random checkpoints (built once per session), loopback-only ROS settings."""

import fcntl
import functools
import os
import pathlib
import tempfile
import time

import numpy as np
import pytest

# Ids 10-99 keep the DDS ports below the Linux ephemeral range (as the Makefile's).
DOMAIN_IDS = range(10, 100)
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... under pytest -n; "" without


def _claim_domain_id() -> int:
    """This test process's own DDS domain, held by an flock on /tmp/pop_ros-domain-<id>.lock for the
    process's life. Without xdist: ROS_DOMAIN_ID as given (the Makefile exports one per make) or one from
    the pid. Under xdist every worker takes the first free id from base + worker index on, so two
    workers, or two concurrent makes that both run workers, never share a domain."""
    given = os.environ.get("ROS_DOMAIN_ID", "")
    base = int(given) if given.isdigit() and int(given) in DOMAIN_IDS else os.getpid() % 90 + 10
    index = int(XDIST_WORKER[2:]) if XDIST_WORKER[2:].isdigit() else 0
    lock_dir = pathlib.Path(tempfile.gettempdir())
    for step in range(len(DOMAIN_IDS)):
        candidate = DOMAIN_IDS.start + (base - DOMAIN_IDS.start + index + step) % len(DOMAIN_IDS)
        lock = open(lock_dir / f"pop_ros-domain-{candidate}.lock", "a")  # held open until this process exits
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            if XDIST_WORKER:
                continue
            return base  # a plain run keeps the id it was given; workers elsewhere skip it while we hold it
        _DOMAIN_LOCKS.append(lock)
        return candidate
    raise RuntimeError("every ROS domain id 10-99 is held by another pop_ros test process")


_DOMAIN_LOCKS: list = []
# Every test session: DDS on loopback, its own domain, no hub.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(_claim_domain_id())
os.environ["HF_HUB_OFFLINE"] = "1"
# One torch thread per test process and per node or CLI it starts (they inherit the environment): the
# tests' models are tiny, where a second intra-op thread gains nothing and two xdist workers, each with
# a node process beside it, would oversubscribe 2 cores. On a 2-core machine at load 9-10 this took
# test_evaluation's end-to-end and run-changes tests from 296 s to 123 s. OMP_NUM_THREADS=N overrides.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("POP_ROS_CACHE", str(pathlib.Path(__file__).resolve().parents[1] / "build" / "test-cache"))
# Head files a user made with pop-find-heads (~/.local/share/pop_ros/heads) must not change what tests see;
# one folder per xdist worker, so workers writing head files do not read each other's.
os.environ["XDG_DATA_HOME"] = str(
    pathlib.Path(__file__).resolve().parents[1] / "build" / "test-data" / (XDIST_WORKER or "main")
)

# The environment every tool this session starts is compared with (test/tool_server.py).
SESSION_ENVIRONMENT = dict(os.environ)


# Tests on a pop_node running in its own process (started once per module) are slow like the node start:
# marked here by fixture, so a new test on that fixture is marked too. Other slow tests carry the marker.
SLOW_FIXTURES = {"node_process"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# The files that take longest (`--durations`, summed per file; the colcon build's first compile of the
# interface package leads in a fresh clone), longest first. Under `--dist loadfile` a worker is handed the
# next file as it runs out of work: a long file left at the end of the queue keeps one worker busy while
# the other idles. The Makefile passes --no-loadscope-reorder so that xdist keeps this order instead of
# sorting files by their number of tests. Only the order changes; a file missing here runs after these.
RUN_FIRST = (
    "test_colcon_build.py", "test_doc_commands.py", "test_evaluation.py", "test_tools.py",
    "test_node_teaching.py", "test_trimming.py", "test_node.py", "test_device_check.py",
    "test_node_latency.py", "test_bag.py", "test_behaviours.py", "test_node_hardening.py",
    "test_node_fuzz.py", "test_node_tracking.py", "test_node_actions.py", "test_node_entry.py",
)  # fmt: skip


@pytest.hookimpl(specname="pytest_collection_modifyitems", trylast=True)
def pytest_collection_modifyitems_longest_files_first(items):
    rank = {name: index for index, name in enumerate(RUN_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(RUN_FIRST)))  # stable: each file's own order kept


def pytest_sessionfinish(session, exitstatus):
    """A run that selected no test (a mistyped -k/-m, a file that failed to collect) is a failure with a
    reason, never pytest's exit code 5 that a script might mistake for something else."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("\nno test ran: check the -k/-m selection and the paths given", flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_adapters():
    """One tiny random adapter per MLLM family, loaded through the real loader."""
    from pop_ros.models.loading import load_mllm
    from pop_ros.models.tiny import FAMILIES

    return {family: load_mllm(f"tiny:{family}", device="cpu", dtype="float32") for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_visual():
    from pop_ros.models.loading import load_visual

    return load_visual("tiny:dinov3", device="cpu", dtype="float32", resolution=224)


@pytest.fixture(scope="session")
def tiny_pointer():
    from pop_ros.pipeline import PartPointer

    return PartPointer.from_preset("tiny")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def tool_here(capsys, caplog):
    """`tool_here(main, *argv)`: a command-line tool's `main(argv)` in this process, as
    `subprocess.CompletedProcess` (its log lines, which a process prints on stderr, appended to the
    captured stderr). For tests whose subject is what the tool does, not the process: each saves a
    process start (~4.5 s of CPU importing torch, transformers and torchao). Commands run through
    `tool_shims` (the docs' blocks, the end-to-end runs), and as processes of their own where only a
    fresh interpreter shows it: one-line refusals, signals, torchrun."""
    import logging
    import subprocess

    from test.tool_server import exit_code

    def run(main, *argv):
        capsys.readouterr()  # nothing printed before belongs to this run
        caplog.clear()
        with caplog.at_level(logging.INFO):
            try:
                returncode = main([str(arg) for arg in argv])
            except SystemExit as exit_:  # argparse's own refusals, as the interpreter ends a process on them
                returncode = exit_code(exit_.code)
        captured = capsys.readouterr()
        logged = "".join(f"{record.levelname} {record.name}: {record.getMessage()}\n" for record in caplog.records)
        return subprocess.CompletedProcess([main.__module__, *argv], returncode, captured.out, captured.err + logged)

    return run


@pytest.fixture(scope="session")
def tool_shims() -> pathlib.Path:
    """A folder holding one shim per console script of pop_ros (`tool_shims / "pop-eval"`, or the folder
    first on PATH): each runs its tool in a fork of one interpreter that has imported torch and
    transformers once for the whole session (test/tool_server.py says what that leaves out), instead
    of a process that imports them again (~3.5 s of CPU). The first worker that asks starts the server;
    it ends with the session."""
    import importlib.metadata
    import select
    import stat
    import subprocess
    import sys

    from test import tool_server

    session_pid = os.getppid() if XDIST_WORKER else os.getpid()  # xdist's workers are the session's children
    base = pathlib.Path(tempfile.gettempdir())
    base = base if len(str(base)) < 60 else pathlib.Path("/tmp")  # a socket's path has at most 107 bytes
    folder = base / f"pop_ros_tools_{session_pid}"
    folder.mkdir(mode=0o700, exist_ok=True)  # the server runs any script it is sent: for this user only
    status = os.lstat(folder)
    if not stat.S_ISDIR(status.st_mode) or status.st_uid != os.getuid() or status.st_mode & 0o077:
        pytest.fail(f"{folder} is not this user's own folder: the test tool server will not listen there")
    socket_path = folder / "server.sock"
    with open(folder / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = folder / "ready"  # holds the server's pid
        if not (ready.is_file() and tool_server.process_exists(int(ready.read_text() or 0))):
            bin_dir = pathlib.Path(sys.executable).parent
            scripts = {
                entry.name: str(bin_dir / entry.name)
                for entry in importlib.metadata.distribution("pop_ros").entry_points
                if entry.group == "console_scripts"
            }
            tool_server.write_shims(folder, scripts, str(pathlib.Path(__file__).parent))
            with open(folder / "server.log", "w") as log:
                server = subprocess.Popen(
                    [sys.executable, tool_server.__file__, str(socket_path), str(session_pid)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                    env=SESSION_ENVIRONMENT, start_new_session=True,
                )  # fmt: skip
            said = []
            while "ready" not in said and select.select([server.stdout], [], [], 300)[0]:
                line = server.stdout.readline()
                if not line:
                    break
                said.append(line.strip())
            if "ready" not in said:
                server.kill()
                log_text = (folder / "server.log").read_text()[-3000:]
                pytest.fail(f"the test tool server did not start: {said}\n{log_text}")
            _TOOL_SERVERS.append(server)
            ready.write_text(str(server.pid))
    os.environ[tool_server.SOCKET_ENV] = str(socket_path)
    return folder


_TOOL_SERVERS: list = []  # the server this worker started, referenced until the worker ends


def heads_on(adapter, heads):
    """`heads` as given for a plain transformer; on a hybrid model (Qwen3.5) each moves to the first
    layer at or after it that can hold heads (its full-attention layers), else the last such layer:
    generic tests then run the same shape of head set on every family."""
    allowed = list(adapter.head_layers)
    moved = []
    for layer, head in heads:
        deeper = [candidate for candidate in allowed if candidate >= layer]
        moved.append((deeper[0] if deeper else allowed[-1], head))
    return moved


def random_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---- pop_node tests: one copy of each helper -------------------------------------------------------------
# ROS and OpenCV are imported inside the helpers: test files without a node do not pay for them.
WIDTH, HEIGHT = 320, 240  # the sample scenes' size
K = [300.0, 0.0, 160.0, 0.0, 300.0, 120.0, 0.0, 0.0, 1.0]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def set_parameter(client, name: str, value, node: str = "/pop_node"):
    """`ros2 param set <node> <name> <value>`, over the node's set_parameters service; the result."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    message = Parameter(name, value=value).to_parameter_msg()
    response = client.call(SetParameters, f"{node}/set_parameters", SetParameters.Request(parameters=[message]))
    return response.results[0]


@functools.cache
def scene(index: int = 0) -> np.ndarray:
    """Sample scene `index` as RGB uint8, (240, 320, 3)."""
    import cv2

    from pop_ros.paths import SAMPLE_DIR

    return cv2.cvtColor(cv2.imread(str(SAMPLE_DIR / f"scene_{index}.png")), cv2.COLOR_BGR2RGB)


def colour_msg(stamp, frame_id: str = "cam_color_optical_frame", image: np.ndarray | None = None):
    """A bgr8 sensor_msgs/Image of `image` (default: sample scene 0) with the given header."""
    import cv2

    from pop_ros.messages.image_conversion import from_array

    msg = from_array(cv2.cvtColor(scene() if image is None else image, cv2.COLOR_RGB2BGR), "bgr8")
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    return msg


def request(query: str = "", support_set: str = "", image=None):
    """A PointToPart request; without `image` the node answers about its latest camera frame."""
    from pop_ros_interfaces.srv import PointToPart

    req = PointToPart.Request(query=query, support_set=support_set)
    if image is not None:
        req.image = image
    return req


def same_stamp(a, b) -> bool:
    return a.sec == b.sec and a.nanosec == b.nanosec


def has_depth_for(node, stamp) -> bool:
    """Whether the node holds camera_info and the depth image stamped `stamp` (not merely an earlier one:
    a request sent before its own depth has arrived answers in 2D)."""
    return node.camera.camera_info is not None and node.camera.depth_near(stamp, 0.0)[0] is not None


def depth_and_info(ros, namespace: str, stamp, depth_m: float = 1.25) -> None:
    """camera_info (K) and a flat depth image, both stamped `stamp`, on the namespace's camera topics."""
    from sensor_msgs.msg import CameraInfo, Image

    from pop_ros.messages.image_conversion import from_array

    info = CameraInfo(width=WIDTH, height=HEIGHT, k=K, distortion_model="plumb_bob")
    info.header.stamp = stamp
    depth = from_array(np.full((HEIGHT, WIDTH), depth_m, np.float32), "32FC1")
    depth.header.stamp = stamp
    ros.publisher(CameraInfo, f"/{namespace}/camera_info").publish(info)
    ros.publisher(Image, f"/{namespace}/depth").publish(depth)


# The node's wall-clock thresholds for tests that are not about them: generous, so that a loaded
# machine (a frame 1.5 s old by the time a tick reads it, a tiny query taking seconds) cannot change an
# outcome. A test about staleness or busy answers sets its own value and uses frames minutes old.
UNHURRIED = ("max_frame_age:=600.0", "busy_timeout:=600.0")


@pytest.fixture
def inprocess():
    """Start a PopNode in-process under /<namespace>, with the shipped params file, UNHURRIED, then overrides:
    `start(namespace, "name:=value", ..., activate=True, ros_args=("-r", "image:=/cam"))` ->
    (RosClient, node, configure result)."""
    from pop_ros.clients.ros_client import PARAMS_FILE, RosClient
    from pop_ros.ros.node import PopNode

    started = []

    def start(namespace, *overrides, activate=True, ros_args=()):
        args = ["--ros-args", "--params-file", str(PARAMS_FILE), "-p", "preset:=tiny", "-p", "autostart:=false"]
        args += list(ros_args)  # remaps
        for override in (*UNHURRIED, *overrides):  # a later -p wins: a test's own thresholds replace these
            args += ["-p", override]
        ros = RosClient(f"{namespace}_client", args=args)
        node = PopNode(context=ros.context, namespace=namespace)
        ros.add_node(node)
        configured = node.trigger_configure()
        if activate and node.pointer is not None:
            node.trigger_activate()
        started.append((ros, node))
        return ros, node, configured

    yield start
    for ros, node in started:
        ros.executor.remove_node(node)
        node.destroy_node()
        ros.close()


@pytest.fixture
def constructed_visual_map(monkeypatch):
    """Replace the pipeline's visual similarity map (the rest of the path stays real): `set({(row, col):
    value})` makes every support's (K, H_t, W_t) map zero but for those patches of the target's visual
    grid. Returns a dict whose "shape" is (H_t, W_t) once a query has run. Random tiny models cannot make
    two copies of an object look alike; this puts the copies where a test needs them."""
    import torch

    from pop_ros.pipeline import fusion

    original = fusion.visual_maps
    grid = {}

    def set_cells(cells):
        def constructed(supports, features, chosen, target, mode):
            maps = torch.zeros_like(original(supports, features, chosen, target, mode))  # (K, H_t, W_t)
            for (row, col), value in cells.items():
                maps[:, row, col] = value
            grid["shape"] = tuple(maps.shape[1:])
            return maps

        monkeypatch.setattr(fusion, "visual_maps", constructed)
        return grid

    return set_cells


# ---- a pinhole camera for rendered depth (640 x 480, f = 600 px, centre at the image centre) ----------------
PINHOLE_WIDTH, PINHOLE_HEIGHT, PINHOLE_FOCAL, PINHOLE_CX, PINHOLE_CY = 640, 480, 600.0, 319.5, 239.5


def pinhole_camera():
    """The CameraModel of the rendered-depth tests (rectified, no distortion, no ROI or binning)."""
    import types

    from pop_ros.spatial.camera_model import CameraModel

    f, cx, cy = PINHOLE_FOCAL, PINHOLE_CX, PINHOLE_CY
    info = types.SimpleNamespace(
        width=PINHOLE_WIDTH, height=PINHOLE_HEIGHT, k=[f, 0, cx, 0, f, cy, 0, 0, 1],
        p=[f, 0, cx, 0, 0, f, cy, 0, 0, 0, 1, 0], d=[], r=[1, 0, 0, 0, 1, 0, 0, 0, 1],
        distortion_model="plumb_bob", binning_x=0, binning_y=0,
        roi=types.SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0),
    )  # fmt: skip
    return CameraModel.from_camera_info(info)


def pinhole_rays() -> np.ndarray:
    """(H, W, 3): each pixel's ray with z = 1 (ROS pixel centres at integers)."""
    cols, rows = np.meshgrid(np.arange(PINHOLE_WIDTH, dtype=float), np.arange(PINHOLE_HEIGHT, dtype=float))
    return np.stack(
        [(cols - PINHOLE_CX) / PINHOLE_FOCAL, (rows - PINHOLE_CY) / PINHOLE_FOCAL, np.ones_like(cols)], axis=-1
    )


# ---- a real model's latency on a RealSense-like stream -------------------------------------------------------
REALSENSE_RATE_HZ = 30.0  # colour and aligned depth, on the same stamps


class CameraStream:
    """A RealSense-like camera on `/<namespace>/{image,depth,camera_info}` from a thread: every period
    a colour frame (sample scene 0), then the aligned depth (a plane at `depth_m`, the colour's size) and
    camera_info on the same stamp, as realsense2_camera publishes them with align_depth. `depth_frame_id`
    and `depth_size` (W, H) make it an unaligned depth topic. Use as a context manager; `frames` counts
    the frames published."""

    def __init__(self, ros, namespace: str, rate_hz: float = REALSENSE_RATE_HZ, depth_m: float = 1.25,
                 frame_id: str = "cam_color_optical_frame", depth_frame_id: str | None = None,
                 depth_size: tuple[int, int] | None = None):  # fmt: skip
        import threading

        from sensor_msgs.msg import CameraInfo, Image

        from pop_ros.messages.image_conversion import from_array

        self.ros, self.period_s = ros, 1.0 / rate_hz
        width, height = depth_size or (WIDTH, HEIGHT)
        self.colour = colour_msg(ros.now_stamp(), frame_id)
        self.depth = from_array(np.full((height, width), depth_m, np.float32), "32FC1")
        self.depth.header.frame_id = frame_id if depth_frame_id is None else depth_frame_id
        self.info = CameraInfo(width=WIDTH, height=HEIGHT, k=K, distortion_model="plumb_bob")
        self.info.header.frame_id = frame_id
        self.publishers = [
            ros.publisher(Image, f"/{namespace}/image"),
            ros.publisher(Image, f"/{namespace}/depth"),
            ros.publisher(CameraInfo, f"/{namespace}/camera_info"),
        ]
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            stamp = self.ros.now_stamp()
            for publisher, msg in zip(self.publishers, (self.colour, self.depth, self.info), strict=True):
                msg.header.stamp = stamp
                publisher.publish(msg)
            self.frames += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def slow_queries(node, delay_s: float, new_frame: bool = False) -> list:
    """Make the node's models as slow as a real one: each `point` / `point_many` (called while the
    models are held, after the query took its capture) first sleeps `delay_s`; with `new_frame` it
    then also waits until a newer camera frame has arrived (so a frame arrives during every query,
    whatever the machine's load) and its depth. Returns the list of inference calls' start seqs (the
    newest frame's then)."""
    pointer, calls = node.pointer, []

    def slowed(method):
        def run(*args, **kwargs):
            seq = node.camera.latest_seq
            calls.append(seq)
            time.sleep(delay_s)
            if new_frame:
                assert wait_for(lambda: _newer_frame_with_depth(node, seq), 60), "no camera frame during the query"
            return method(*args, **kwargs)

        return run

    pointer.point, pointer.point_many = slowed(pointer.point), slowed(pointer.point_many)
    return calls


def _newer_frame_with_depth(node, seq: int) -> bool:
    latest = node.camera.latest
    return latest is not None and latest.seq > seq and node.camera.depth.nearest(latest.stamp_s, 0.0)[0] is not None


@pytest.fixture
def realtime(inprocess):
    """`start(namespace, *overrides)` -> (RosClient, node): an in-process PopNode (as `inprocess`) on
    an executor of its own with pop_node's thread count, so queries waiting for the models hold
    threads as they do in pop_node while camera callbacks keep arriving."""
    import threading

    from rclpy.executors import MultiThreadedExecutor

    from pop_ros.ros.node import EXECUTOR_THREADS

    executors = []

    def start(namespace, *overrides, **options):
        ros, node, _ = inprocess(namespace, *overrides, **options)
        ros.executor.remove_node(node)
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=ros.context)
        executor.add_node(node)
        threading.Thread(target=executor.spin, daemon=True).start()
        executors.append(executor)
        return ros, node

    yield start
    for executor in executors:
        executor.shutdown(timeout_sec=1.0)
