"""Destroying rclpy's lifecycle state machine with the node, safely.

rclpy's `LifecycleNode` never destroys its state machine, whose lifecycle services and
`transition_event` publisher then keep a destroyed node, and its context's DDS participant, serving
in the ROS graph. Destroying it is not enough on its own: rclpy reads `self._state_machine` without
holding it, so a transition that runs during or after the destroy would use freed memory (a SIGSEGV,
not an exception). `TransitionGuard` runs each transition under a lock, and the destroy takes that
lock (waiting a bounded time for a transition in progress) and leaves `DestroyedStateMachine` in the
machine's place: a later transition raises rclpy's own "state machine is not initialized" error.
"""

from __future__ import annotations

import threading

from lifecycle_msgs.msg import State


class DestroyedStateMachine:
    """What the node holds as its state machine once that is destroyed."""

    initialized = False  # rclpy checks this first: a transition raises RuntimeError
    current_state = (State.PRIMARY_STATE_FINALIZED, "finalized")

    def __getattr__(self, name: str):
        raise RuntimeError(f"the node was destroyed: its lifecycle state machine is gone (asked for {name!r})")


class TransitionGuard:
    def __init__(self):
        self._lock = threading.RLock()  # reentrant: a transition's callback may trigger another

    def run(self, transition, *args):
        with self._lock:
            return transition(*args)

    def destroy(self, node, wait_s: float) -> bool:
        """Destroy `node._state_machine` once no transition runs (waiting at most `wait_s`); False,
        and nothing destroyed, when one still runs (the machine then lives until the process ends)."""
        if isinstance(node._state_machine, DestroyedStateMachine):
            return True
        if not self._lock.acquire(timeout=wait_s):
            return False
        try:
            machine, node._state_machine = node._state_machine, DestroyedStateMachine()
            machine.destroy_when_not_in_use()
            return True
        finally:
            self._lock.release()
