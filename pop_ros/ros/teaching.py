"""Teaching and editing the support library from ROS.

- `~/teach_click` (geometry_msgs/PointStamped, pixels in x, y) and `~/teach_click_point`
  (geometry_msgs/Point, what rqt_image_view's "publish click location" emits) add the clicked frame
  as an exemplar of the set named by `teach_set`. A PointStamped whose header stamp is not zero
  names its frame: the click is applied to the colour frame with exactly that stamp while it is
  among the last FRAME_HISTORY frames (camera.py; max_frame_age does not apply, the frame is named),
  else refused with the reason. Stamp zero, and every Point, take the latest frame (max_frame_age
  applies). The same frame clicked several times is stored once (supports.py);
- each click is answered on `~/teach_result` (pop_ros_interfaces/TeachResult) and in the log, and a
  crop around the click goes to `~/teach_preview` (sensor_msgs/Image rgb8) so the operator sees
  what was taken;
- `~/add_exemplar`, `~/remove_exemplar`, `~/remove_support_set`, `~/set_default_query` edit the
  library, `~/list_support_sets` lists it.

Changes are persisted by the support library when `library_writable` is true; edits of a
read-only library are refused with the reason, and clicks then teach in memory only (as
`add_exemplar` does), which the feedback says.
"""

from __future__ import annotations

from geometry_msgs.msg import Point, PointStamped
from sensor_msgs.msg import Image

from pop_ros.messages.image_conversion import ImageConversionError, from_array
from pop_ros.ros.answers import Outcome
from pop_ros.visualize import click_thumbnail
from pop_ros_interfaces.msg import TeachResult
from pop_ros_interfaces.srv import AddExemplar, ListSupportSets, RemoveExemplar, RemoveSupportSet, SetDefaultQuery


class Teaching:
    def __init__(self, node, callback_group):
        self.node = node
        self.result_pub = node.create_publisher(TeachResult, "~/teach_result", 10)
        self.preview_pub = node.create_publisher(Image, "~/teach_preview", 1)
        # Clicks do the work of add_exemplar (features, files): the query group, not the camera's.
        node.create_subscription(
            PointStamped, "~/teach_click", node.guarded(self.on_click), 10, callback_group=callback_group
        )
        node.create_subscription(
            Point, "~/teach_click_point", node.guarded(self.on_click_point), 10, callback_group=callback_group
        )
        services = {
            "~/add_exemplar": (AddExemplar, self.on_add_exemplar),
            "~/list_support_sets": (ListSupportSets, self.on_list_support_sets),
            "~/remove_exemplar": (RemoveExemplar, self.on_remove_exemplar),
            "~/remove_support_set": (RemoveSupportSet, self.on_remove_support_set),
            "~/set_default_query": (SetDefaultQuery, self.on_set_default_query),
        }
        for name, (srv_type, callback) in services.items():
            node.create_service(srv_type, name, node.guarded(callback), callback_group=callback_group)

    # ---- library services ------------------------------------------------------------------------------
    def on_add_exemplar(self, request, response):
        from pop_ros.supports import SupportError

        node = self.node
        response.num_exemplars = 0
        problem = node.not_ready_reason()
        if not problem:
            try:
                image, header = node.camera.target_image(request.image, float(node.param("max_frame_age")))
                with node.models() as held:
                    if held.pointer is None:
                        raise SupportError(held.reason)
                    # Features are computed now, once; the exemplar is added only if that succeeds.
                    updated = held.pointer.add_exemplar(
                        request.support_set, image, (request.u, request.v), request.query
                    )
                response.num_exemplars = len(updated.exemplars)
                added = added_text(request.support_set, request.u, request.v, header, updated, held.pointer.library)
                node.get_logger().info(f"add_exemplar: {added}")
            except (SupportError, ImageConversionError, ValueError) as error:
                problem = str(error)
        response.success = not problem
        response.message = problem or f"added to {request.support_set!r}"  # behaviour trees compare this text
        return response

    def on_list_support_sets(self, request, response):
        from pop_ros.supports import SupportError

        pointer = self.node.pointer
        if pointer is None:  # an unconfigured node must not look like an empty library
            response.success = False
            response.message = self.node.not_ready_reason() or "node is not configured"
            return response
        library = pointer.library
        for name in library.names():
            try:
                support_set, storage = library.get(name), library.storage(name)
            except SupportError:  # removed since names() was read
                continue
            response.names.append(name)
            response.default_queries.append(support_set.query)
            response.num_exemplars.append(len(support_set.exemplars))
            response.storage.append(storage)
            response.writable.append(library.writable)
        response.success = True
        where = str(library.path) if library.path is not None else "memory (no support_library)"
        count = len(response.names)
        response.message = f"{count} set{'' if count == 1 else 's'} from {where}"
        if library.errors:
            response.message += f"; {len(library.errors)} entries failed to load (see the log at configure)"
        return response

    # ---- clicks -----------------------------------------------------------------------------------------
    def on_click(self, msg: PointStamped) -> None:
        stamp = msg.header.stamp
        self.teach(msg.point.x, msg.point.y, None if stamp.sec == 0 and stamp.nanosec == 0 else stamp)

    def on_click_point(self, msg: Point) -> None:
        self.teach(msg.x, msg.y)

    def teach(self, u: float, v: float, stamp=None) -> TeachResult:
        """Add the frame stamped `stamp` (None: the latest frame) with the click (u, v) to `teach_set`;
        answers on ~/teach_result and the log."""
        from pop_ros.supports import SupportError

        node = self.node
        set_name = node.param("teach_set")
        result = TeachResult(support_set=set_name, u=float(u), v=float(v))
        image = None
        try:
            problem = node.not_ready_reason()
            if problem:
                raise SupportError(problem)
            if not set_name:
                raise SupportError("teach_set is empty: set it to the support set that clicks should teach")
            if stamp is None:
                image, result.header = node.camera.target_image(Image(), float(node.param("max_frame_age")))
            else:  # the frame the operator clicked on, however old: no max_frame_age
                image, result.header = node.camera.target_image(Image(), 0.0, node.camera.frame_at(stamp))
            with node.models() as held:  # bounded like every query: camera threads stay free
                if held.outcome is Outcome.BUSY:
                    raise SupportError(f"{held.reason.removesuffix('; try again')}; click again")
                if held.pointer is None:
                    raise SupportError(held.reason)
                updated = held.pointer.add_exemplar(set_name, image, (u, v), node.param("teach_query"))
            result.success, result.num_exemplars = True, len(updated.exemplars)
            which = "the latest frame" if stamp is None else "the clicked frame"
            result.message = added_text(set_name, u, v, result.header, updated, held.pointer.library, which)
            node.get_logger().info(f"teach_click: {result.message}")
        except (SupportError, ImageConversionError, ValueError) as error:
            result.success, result.message = False, f"click not taught: {error}"
            node.get_logger().warning(f"teach_click: {result.message}")
        self.result_pub.publish(result)
        if result.success:
            self.preview_pub.publish(from_array(click_thumbnail(image, (u, v)), "rgb8", result.header))
        return result

    # ---- editing services -------------------------------------------------------------------------------
    def _edit(self, response, action, describe) -> object:
        """Run `action(pointer)` with the pointer read once inside the work slot; answer success with
        `describe(outcome)` or the reason."""
        from pop_ros.supports import SupportError

        problem = self.node.not_ready_reason()
        if not problem:
            try:
                # Edits wait for a running query (the pointer's lock), so they take a bounded work slot
                # like queries do: waiting edits must not occupy the camera's executor threads.
                with self.node.models() as held:
                    if held.pointer is None:
                        raise SupportError(held.reason)
                    outcome = action(held.pointer)
                response.success = True
                response.message = f"{describe(outcome)}; {kept_where(held.pointer.library)}"
                self.node.get_logger().info(response.message)
                return outcome
            except SupportError as error:
                problem = str(error)
        response.success, response.message = False, problem
        return None

    def on_remove_exemplar(self, request, response):
        updated = self._edit(
            response,
            lambda pointer: pointer.library.remove_exemplar(request.support_set, int(request.index)),
            lambda kept: f"removed exemplar {request.index} of {request.support_set!r}; {len(kept.exemplars)} left",
        )
        response.num_exemplars = len(updated.exemplars) if updated is not None else 0
        return response

    def on_remove_support_set(self, request, response):
        from pop_ros.supports import SupportError

        def remove(pointer):
            if request.support_set and request.support_set == self.node.param("continuous_support_set"):
                raise SupportError(
                    f"{request.support_set!r} is the continuous_support_set: set continuous_support_set to "
                    "another set (or empty) first"
                )
            return pointer.library.remove_support_set(request.support_set)

        self._edit(response, remove, lambda _: f"removed support set {request.support_set!r}")
        return response

    def on_set_default_query(self, request, response):
        self._edit(
            response,
            lambda pointer: pointer.library.set_default_query(request.support_set, request.query),
            lambda updated: f"default query of {request.support_set!r} is now {updated.query!r}",
        )
        return response


def added_text(set_name: str, u: float, v: float, header, updated, library, which: str = "the frame") -> str:
    """What an added exemplar is, for the answer and the log: set, click, the frame's stamp, the
    set's exemplar count and where it is kept."""
    stamp = header.stamp
    image = updated.exemplars[-1].image
    return (
        f"added exemplar {len(updated.exemplars) - 1} of {set_name!r} at ({u:.1f}, {v:.1f}) on {which} "
        f"(stamp {stamp.sec}.{stamp.nanosec:09d}, {image.shape[1]}x{image.shape[0]}); {set_name!r} has "
        f"{len(updated.exemplars)} exemplar{'' if len(updated.exemplars) == 1 else 's'}; {kept_where(library)}"
    )


def kept_where(library) -> str:
    """Where an edit of `library` is kept, for the answer."""
    if library.writable:
        return f"saved to {library.path}"
    return "kept in memory only (library_writable is false)"
