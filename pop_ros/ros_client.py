"""Talking to pop_node from Python: a client node of our own spinning in a background thread. Used by
`make demo`, `pop-bench` and the tests (pop_node as a child process: `pop_ros.testing.NodeProcess`)."""

from __future__ import annotations

import threading
import time

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from pop_ros.paths import config_dir

PARAMS_FILE = config_dir() / "pop_ros.yaml"
LIBRARY = config_dir() / "supports" / "library.yaml"
SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)


class RosClient:
    """A node of our own in a private context, spun by a background executor."""

    def __init__(self, name: str, args: list[str] | None = None):
        self.context = rclpy.Context()
        rclpy.init(args=args, context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self._clients = {}
        self._publishers = {}

    def add_node(self, node) -> None:
        self.executor.add_node(node)

    def client(self, srv_type, name: str):
        """This node's client of service `name`, made once. Made early, DDS has matched it on the
        server's side too by the time it is used (a request sent before that can go unanswered)."""
        if name not in self._clients:
            self._clients[name] = self.node.create_client(srv_type, name)
        return self._clients[name]

    def call(self, srv_type, name: str, request, timeout: float = 60.0):
        client = self.client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} did not appear within {timeout} s")
        return self.wait(client.call_async(request), timeout)

    def wait_for_node(self, namespace: str = "", timeout: float = 120.0):
        """The node's `list_support_sets` answer once it has started: served, and no longer loading its
        models (autostart configures after the services are up, answering "node is configuring").
        Raises TimeoutError when it does not settle within `timeout`."""
        from pop_ros.ros.answers import CONFIGURING
        from pop_ros_interfaces.srv import ListSupportSets

        name = f"{namespace}/pop_node/list_support_sets"
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            listing = self.call(ListSupportSets, name, ListSupportSets.Request(), max(left, 0.1))
            if not listing.message.startswith(CONFIGURING):
                return listing
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still says: {listing.message}")
            time.sleep(0.2)  # the poll's period: nothing to wait on but the node's next answer

    def call_async(self, srv_type, name: str, request):
        if name not in self._clients:
            self._clients[name] = self.node.create_client(srv_type, name)
            self._clients[name].wait_for_service(timeout_sec=60.0)
        return self._clients[name].call_async(request)

    @staticmethod
    def wait(future, timeout: float = 60.0):
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError("no answer in time")
        return future.result()

    def publisher(self, msg_type, topic: str, qos=SENSOR_QOS, wait_for_subscriber: bool = True):
        key = (msg_type, topic)
        if key not in self._publishers:
            self._publishers[key] = self.node.create_publisher(msg_type, topic, qos)
        publisher = self._publishers[key]
        deadline = time.monotonic() + 20
        while wait_for_subscriber and publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return publisher

    def collect(self, msg_type, topic: str, qos=10, wait_for_publisher: bool = True) -> list:
        """A list that fills with the topic's messages. Waits (up to 20 s) until the subscription has
        matched a publisher: messages sent before discovery completes are never delivered."""
        received: list = []
        subscription = self.node.create_subscription(msg_type, topic, received.append, qos)
        deadline = time.monotonic() + 20
        while wait_for_publisher and subscription.get_publisher_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return received

    def now_stamp(self):
        return self.node.get_clock().now().to_msg()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
