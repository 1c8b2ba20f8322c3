"""A behaviour tree that finds a mug's handle with pop_node, then hands the point to a grasp (a stub).

    ros2 run pop_ros find-handle-tree [--query "handle of the mug"] [--support-set mug_handle]
        [--namespace /pop_node] [--rate 10] [--timeout 30] [--require-3d]

pop_node must be running and receiving camera frames. The tree is ticked at --rate Hz by a timer on
the tree's own node; the same executor delivers the action's feedback and result, which is only possible because
no behaviour blocks in update(). Each tick prints the tree (py_trees.display); the program ends
when the tree succeeds (exit 0) or fails (exit 1, with the reason).
"""

from __future__ import annotations

import argparse
import sys

import py_trees
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from pop_ros.behaviours import PointToPart, ServiceUnavailableError


class GraspStub(py_trees.behaviour.Behaviour):
    """Where a real grasp would start: reads the point the tree found and succeeds."""

    def __init__(self, name: str = "grasp (stub)", point_key: str = "point"):
        super().__init__(name)
        self.point_key = point_key
        self.blackboard = self.attach_blackboard_client(name=name)
        self.blackboard.register_key(key=point_key, access=py_trees.common.Access.READ)

    def update(self) -> py_trees.common.Status:
        point = self.blackboard.get(self.point_key)
        if point is None:
            self.feedback_message = "no 3D point to grasp (is depth and camera_info arriving?)"
            return py_trees.common.Status.FAILURE
        p = point.point
        self.feedback_message = f"would grasp at ({p.x:.3f}, {p.y:.3f}, {p.z:.3f}) m in {point.header.frame_id}"
        return py_trees.common.Status.SUCCESS


def build_tree(
    query: str, support_set: str, namespace: str, require_3d: bool, timeout_s: float
) -> py_trees.trees.BehaviourTree:
    service = f"{namespace.rstrip('/')}/point_to_part"
    find = PointToPart("find handle", query, support_set, service=service, timeout_s=timeout_s, require_3d=require_3d)
    root = py_trees.composites.Sequence("pick handle", memory=True, children=[find, GraspStub()])
    return py_trees.trees.BehaviourTree(root)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="find-handle-tree", description=__doc__.split("\n\n")[0])
    parser.add_argument("--query", default="handle of the mug", help="the part, in words")
    parser.add_argument("--support-set", default="mug_handle", help="support set name ('' = 0-shot)")
    parser.add_argument("--namespace", default="/pop_node", help="pop_node's fully qualified name")
    parser.add_argument("--rate", type=float, default=10.0, help="ticks per second")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for pop_node's service, and for each answer"
    )
    parser.add_argument("--require-3d", action="store_true", help="fail when the answer has no 3D point")
    args = parser.parse_args(argv)
    if not args.rate > 0 or not args.timeout > 0:
        parser.error("--rate and --timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    non_ros = rclpy.utilities.remove_ros_args(["find-handle-tree", *argv])[1:]
    args = parse_args(non_ros)
    rclpy.init(args=["find-handle-tree", *argv])
    node = rclpy.create_node("find_handle_tree")
    tree = build_tree(args.query, args.support_set, args.namespace, args.require_3d, args.timeout)
    try:
        tree.setup(node=node, timeout=args.timeout + 5.0)
    except ServiceUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        node.destroy_node()
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def tick() -> None:
        tree.tick()
        print(py_trees.display.unicode_tree(tree.root, show_status=True), flush=True)

    node.create_timer(1.0 / args.rate, tick)
    try:
        while rclpy.ok() and tree.root.status in (py_trees.common.Status.INVALID, py_trees.common.Status.RUNNING):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        tree.interrupt()
    status = tree.root.status
    leaf = tree.tip()
    if status == py_trees.common.Status.SUCCESS:
        print(f"SUCCESS: {tree.root.children[-1].feedback_message}")
    else:
        print(f"{status.value}: {leaf.name if leaf else 'tree'}: {leaf.feedback_message if leaf else ''}")
    tree.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0 if status == py_trees.common.Status.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
