"""Harness for the tests and `make demo`: pop_node as a child process, started the way users start it
(`python -m pop_ros.ros.node --ros-args --params-file ...`). Not part of the node's runtime."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Sequence

from pop_ros.clients.ros_client import PARAMS_FILE, RosClient


def node_in_process(namespace: str, client_name: str, parameters: list[str]):
    """(RosClient, PopNode): pop_node in this process under /`namespace`, configured and activated,
    with the shipped params file and then `parameters` ("name:=value", later ones win), spinning on an
    executor of its own with pop_node's thread count (queries waiting for the models hold threads as
    they do in pop_node). For the measuring tools, which time the node itself."""
    import threading

    from rclpy.executors import MultiThreadedExecutor

    from pop_ros.ros.node import EXECUTOR_THREADS, PopNode

    ros = RosClient(client_name, args=_node_arguments(parameters))
    node = PopNode(context=ros.context, namespace=namespace)
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=ros.context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    node.trigger_configure()
    node.trigger_activate()
    return ros, node


def _node_arguments(parameters: list[str]) -> list[str]:
    """The shipped params file, then `parameters` ("name:=value", later ones win)."""
    return ["--ros-args", "--params-file", str(PARAMS_FILE)] + [item for p in parameters for item in ("-p", p)]


@contextlib.contextmanager
def node_beside_client(namespace: str, client_name: str, parameters: list[str]):
    """(RosClient, PopNode) for a `with`: pop_node in this process under /`namespace`, configured and
    activated, spun by the client's own executor beside the client's node; removed, destroyed and the
    client closed at the end. pop-bench's streaming runs, which read the node's own statistics."""
    from pop_ros.ros.node import PopNode

    ros = RosClient(client_name, args=_node_arguments(parameters))
    node = PopNode(context=ros.context, namespace=namespace)
    ros.add_node(node)
    try:
        node.trigger_configure()
        node.trigger_activate()
        yield ros, node
    finally:
        ros.executor.remove_node(node)
        node.destroy_node()
        ros.close()


class NodeProcess:
    """`python -m pop_ros.ros.node --ros-args ...` as a child process, stopped with SIGINT. `program`: the
    command that starts pop_node instead (say, `["ros2", "run", "pop_ros", "pop_node"]`)."""

    def __init__(self, *ros_args: str, log_path: pathlib.Path, program: Sequence[str] | None = None):
        program = list(program) if program else [sys.executable, "-m", "pop_ros.ros.node"]
        command = [*program, "--ros-args", "--params-file", str(PARAMS_FILE), *ros_args]
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_until_serving(self, client: RosClient, namespace: str = "", timeout: float = 120.0) -> None:
        """Block until the node answers `list_support_sets` and has finished configuring (autostart); if
        it does not, stop it and raise with its log."""
        try:
            client.wait_for_node(namespace, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"node did not come up:\n{self.log()}") from None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
