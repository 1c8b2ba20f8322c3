"""Talking to pop_node from Python: a client node of our own spinning in a background thread. Used by
`make demo`, `pop-bench` and the tests (pop_node as a child process: `pop_ros.clients.testing.NodeProcess`)."""

from __future__ import annotations

import threading
import time

import rclpy
from rclpy.action import ActionClient
from rclpy.exceptions import InvalidHandle
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from pop_ros.paths import config_dir

PARAMS_FILE = config_dir() / "pop_ros.yaml"
LIBRARY = config_dir() / "supports" / "library.yaml"
# wait_for_node asks again after this long without an answer (a lost request or response).
ASK_AGAIN_S = 5.0
SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)


class SpinSafeActionClient(ActionClient):
    """rclpy's ActionClient, safe to make and to destroy while another thread spins its node (a
    behaviour tree's node, a RosClient). Two rclpy races (rclpy 9.1 here) end that thread's spin()
    with an exception, after which the node hears nothing:
    - making one: the client joins the node's waitables before its `_lock` exists, and the executor
      asks it for its entities under that lock (ros2/rclpy#1589; fixed upstream by making the lock
      first): here the lock is made before rclpy's constructor runs, and its later assignment ignored;
    - destroying one: an executor that listed the client before it was destroyed fails to enter its
      handle, passes over that, and still adds the destroyed handle to its wait set
      (ros2/rclpy#1385): here a destroyed client adds nothing. One the executor did enter stays valid
      until it leaves (rclpy defers the destruction of a handle in use); what it found ready there
      is taken later, by then possibly from a destroyed handle: a destroyed client takes nothing."""

    def __init__(self, node, action_type, action_name: str, **kwargs):
        self._lock_made_first = threading.Lock()
        self._destroy_requested = False
        super().__init__(node, action_type, action_name, **kwargs)

    # rclpy's constructor assigns `_lock` after registering the client: keep the one made first.
    _lock = property(lambda self: self._lock_made_first, lambda self, _ignored: None)

    def add_to_wait_set(self, wait_set) -> None:
        if not self._destroy_requested:
            super().add_to_wait_set(wait_set)

    def is_ready(self, wait_set) -> bool:
        # not added to this wait set (see add_to_wait_set): its indices there are stale
        return not self._destroy_requested and super().is_ready(wait_set)

    def take_data(self):
        try:
            with self._client_handle:  # held through the takes: a destroy meanwhile waits for them
                if not self._destroy_requested:
                    return super().take_data()
        except InvalidHandle:  # destroyed before the take began
            pass
        return {}  # nothing for execute() to do: no one waits on a destroyed client's goals

    def destroy(self) -> None:
        if self._destroy_requested:
            return
        self._destroy_requested = True  # before the handle goes: see add_to_wait_set
        if self in list(self._node.waitables):
            self._node.remove_waitable(self)
        self._client_handle.destroy_when_not_in_use()


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
        self._closed = False

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
        said = "no answer"
        while time.monotonic() < deadline:
            left = deadline - time.monotonic()
            try:
                listing = self.call(ListSupportSets, name, ListSupportSets.Request(), min(max(left, 0.1), ASK_AGAIN_S))
            except TimeoutError:
                # A request (or its answer) sent before DDS matched both sides of a new client is lost
                # and rclpy never resends it (the node's log then says "failed to send response"):
                # listing is read-only, so it is asked again.
                continue
            if not listing.message.startswith(CONFIGURING):
                return listing
            said = f"still says: {listing.message}"
            time.sleep(0.2)  # the poll's period: nothing to wait on but the node's next answer
        raise TimeoutError(f"{name}: {said} after {timeout:g} s")

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
        """Stop spinning, destroy the node and shut the context down (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        self.executor.shutdown()
        # The spin thread ended before the context goes: a process that exited with it still inside
        # rcl aborted ("terminate called without an active exception", exit -6: pop-bench's cameras).
        self._thread.join(timeout=5.0)
        # rclpy's destroy_node leaves waitables (action clients) alive, and each keeps the node, the
        # context and its DDS participant in the graph: destroyed here. The context is shut down, not
        # destroyed: another executor on it (a test's, a tool's) may still ask it whether it is ok.
        for waitable in list(self.node.waitables):
            if isinstance(waitable, ActionClient):  # the QoS event handlers go with their publishers
                waitable.destroy()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
