"""`ros2 param set` on a running pop_node: each proposed value is checked (type, range, a support
set that exists, not a configure-time parameter while configured) before any is applied; then the
pipeline's settings, continuous mode's rate and the diagnostics period follow the new values."""

from __future__ import annotations

import traceback

from rcl_interfaces.msg import SetParametersResult

from pop_ros.ros.parameters import PARAMETERS, check_parameter, check_type


def unknown_set(name: str, known: list[str]) -> str | None:
    """None if `name` is empty or one of `known`, else why not (with the known names)."""
    if not name or name in known:
        return None
    return f"unknown support set {name!r} (known: {', '.join(known) or 'none'})"


class ParameterChanges:
    """The node's on-set-parameters callback (`on_set`)."""

    def __init__(self, node):
        self.node = node

    def on_set(self, parameters) -> SetParametersResult:
        node = self.node
        try:
            return self._check_and_apply(parameters)
        except Exception as error:  # noqa: BLE001 - an exception here would end the process
            node.internal_errors["_on_set_parameters"] += 1
            node.health.error("internal error")
            node.get_logger().error(f"internal error setting parameters: {traceback.format_exc()}")
            return SetParametersResult(successful=False, reason=f"internal error: {type(error).__name__}: {error}")

    def refusal(self, name: str, value, proposed: dict, pointer) -> str | None:
        """Why `name` cannot take `value` now, or None."""
        node = self.node
        writable = {"library_writable": proposed.get("library_writable", node.param("library_writable"))}
        reason = check_type(name, value) or check_parameter(name, value, writable)
        if not reason and name == "continuous_support_set" and pointer is not None:
            unknown = unknown_set(value, pointer.library.names())
            reason = f"continuous_support_set: {unknown}" if unknown else None
        if not reason and (pointer is not None or node.configuring) and not PARAMETERS[name].runtime:
            reason = f"{name} is read at configure: deactivate and clean up the node, set it, then configure again"
        return reason

    def _check_and_apply(self, parameters) -> SetParametersResult:
        node = self.node
        pointer = node.pointer
        proposed = {p.name: p.value for p in parameters if p.name in PARAMETERS}
        for name, value in proposed.items():
            reason = self.refusal(name, value, proposed, pointer)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        if pointer is not None:
            try:
                pointer.settings = node.pointer_settings(proposed)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
            if "continuous_rate" in proposed and node.camera.subscriptions:
                node.continuous.restart(float(proposed["continuous_rate"]))
        if "diagnostics_period" in proposed:
            node.diagnostics.set_period(float(proposed["diagnostics_period"]), node.guarded)
        return SetParametersResult(successful=True)
