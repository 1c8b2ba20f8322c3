"""The node's query services: ~/point_to_part, ~/point_to_parts, ~/add_exemplar, ~/list_support_sets.

Each query: the source image (the request's, else a camera frame), then the models through the
node's work slot (the pointer read once, inside it), then the answer: its 3D point and approach pose
(`locate`), the min_score check, the outputs and its outcome in /diagnostics.
"""

from __future__ import annotations

import dataclasses
import time
from collections import namedtuple

from pop_ros.grasp import GraspSettings
from pop_ros.image_conversion import ImageConversionError
from pop_ros.locate import (
    LocateSettings,
    Placement,
    add_region,
    locate_in_depth,
    locate_pixel,
    locate_with,
    score_note,
)
from pop_ros.progress import PUBLISHING, QueryProgress
from pop_ros.ros.answers import Answer, Outcome
from pop_ros.ros.camera import Frame, NoFrameError, is_empty_image
from pop_ros.ros.teaching import added_text
from pop_ros.stamps import stamped_frame_key
from pop_ros_interfaces.srv import AddExemplar, ListSupportSets, PointToPart, PointToParts

# A result built without instances (by hand, in tests) answers with its single peak.
_Peak = namedtuple("_Peak", "u v score")


@dataclasses.dataclass
class QueryOptions:
    """What a request adds to a query: several instances, a region of interest, its own depth."""

    max_instances: int = 1
    roi: tuple[int, int, int, int] | None = None  # (x, y, width, height); None = the whole image
    depth: object = None  # sensor_msgs/Image aligned to the colour image; None = the depth stream
    camera_info: object = None  # sensor_msgs/CameraInfo, given with `depth`
    return_region: bool = False  # fill part_mask / part_cloud in the response


def query_options(request) -> tuple[QueryOptions, str]:
    """The options of a PointToPart / PointToParts request, or the reason it is refused."""
    roi = request.roi
    box = (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))
    has_depth = not is_empty_image(request.depth)
    has_info = not (request.camera_info.width == 0 and request.camera_info.height == 0)
    options = QueryOptions(
        max_instances=max(int(request.max_instances), 1),
        roi=None if box == (0, 0, 0, 0) else box,
        depth=request.depth if has_depth else None,
        camera_info=request.camera_info if has_info else None,
        return_region=bool(request.return_region),
    )
    if has_depth != has_info:
        given, missing = ("depth", "camera_info") if has_depth else ("camera_info", "depth")
        return options, f"the request has {given} but no {missing}: send both (or neither, to use the streams)"
    return options, ""


def image_outcome(error: ImageConversionError) -> Outcome:
    return Outcome.NO_FRAME if isinstance(error, NoFrameError) else Outcome.BAD_REQUEST


def frame_key(request_image, header) -> str | None:
    """A camera frame is named by its stamp + frame_id (no hashing of the pixels); an image sent
    with the request, or an unstamped frame, by its content (the pipeline hashes it)."""
    return None if not is_empty_image(request_image) else stamped_frame_key(header)


class Queries:
    def __init__(self, node, callback_group):
        self.node = node
        services = {  # name: (type, callback, whether its calls are queries counted on /diagnostics)
            "~/point_to_part": (PointToPart, self.on_point_to_part, True),
            "~/point_to_parts": (PointToParts, self.on_point_to_parts, True),
            "~/add_exemplar": (AddExemplar, self.on_add_exemplar, False),
            "~/list_support_sets": (ListSupportSets, self.on_list_support_sets, False),
        }
        for name, (srv_type, callback, query) in services.items():
            node.create_service(srv_type, name, node.guarded(callback, query), callback_group=callback_group)

    # ---- one query -----------------------------------------------------------------------------------
    def answer(
        self,
        query: str,
        support_set: str,
        request_image,
        publish: bool,
        frame: Frame | None = None,
        wait=True,
        options: QueryOptions | None = None,
        progress: QueryProgress | None = None,
    ) -> Answer:
        """One query on the request's image, else on `frame` (default: the latest camera frame).
        `wait` False: answer busy at once instead of waiting for a running query. `progress` (an
        action goal's): told each stage; its cancel raises QueryCancelled, and nothing is published."""
        options = options or QueryOptions()
        stages = progress or QueryProgress()
        from pop_ros.pipeline import PointerError

        node = self.node
        started = time.perf_counter()
        # The source image's header whenever it is known, failures included.
        header = node.camera.source_header(request_image, frame)
        problem = node.not_ready_reason()
        if problem:
            return Answer(Outcome.NOT_READY, problem, header)
        try:
            image, header = node.camera.target_image(request_image, float(node.param("max_frame_age")), frame)
        except ImageConversionError as error:
            return Answer(image_outcome(error), str(error), header)
        with node.models(wait, progress) as held:
            if held.pointer is None:
                return Answer(held.outcome, held.reason, header)
            try:
                key = frame_key(request_image, header)
                result = held.pointer.point(
                    image,
                    query,
                    support_set=support_set or None,
                    frame_key=key,
                    max_instances=options.max_instances,
                    roi=options.roi,
                    progress=progress,
                )
            except PointerError as error:
                return Answer(Outcome.BAD_REQUEST, str(error), header)
        stages.stage(PUBLISHING)
        answer = self.result_answer(result, image, header, options)
        answer.total_ms = (time.perf_counter() - started) * 1000.0
        stages.check()  # the last boundary: a cancelled query publishes nothing
        if publish:
            self.publish(answer, image, result.heatmap)
        return answer

    def record(self, answer: Answer) -> None:
        """Count one query's outcome and latency for /diagnostics."""
        if answer.outcome.is_refused_input:
            self.node.health.error("refused input")
        self.node.health.query(answer.outcome, answer.total_ms if answer.total_ms > 0 else None)

    def publish(self, answer: Answer, image, heatmap, markers: bool = True) -> None:
        param = self.node.param
        self.node.outputs.publish(
            answer,
            image,
            heatmap,
            bool(param("publish_heatmap")),
            publish_rejected_heatmap=bool(param("publish_rejected_heatmap")),
            markers=markers,
        )

    def result_answer(self, result, image, header, options: QueryOptions | None = None) -> Answer:
        """A pipeline result as an Answer: its instances (instances[0] is the answer itself), each with
        its 3D point and approach pose, the min_score check, and the part's region and grasp frame."""
        options = options or QueryOptions()
        instances = result.instances or [_Peak(result.u, result.v, result.score)]
        min_score = float(self.node.param("min_score"))
        region = GraspSettings.from_parameters(self.node.param)
        image_size = image.shape[:2]
        answers, placement = [], None
        for index, peak in enumerate(instances):
            answer = Answer(
                Outcome.OK,
                "",
                header,
                u=peak.u,
                v=peak.v,
                score=peak.score,
                query=result.query,
                support_set=result.support_set,
                instance=index,
            )
            notes, placement = self.locate(answer, image_size, header, options, placement)
            rejection = score_note(peak.score, min_score)
            if rejection:
                answer.outcome = Outcome.REJECTED
                notes.insert(0, rejection)
            notes += add_region(answer, result.heatmap, placement, region)  # shared with pop-bag
            answer.message = "; ".join(notes) or "ok"
            answers.append(answer)
        best = answers[0]
        best.instances = answers
        return best

    def locate(
        self, answer: Answer, image_size, header, options: QueryOptions, paired: Placement | None = None
    ) -> tuple[list[str], Placement]:
        """Fill `answer`'s 3D point and approach pose for its (u, v): from the request's depth and
        camera_info when it has them, else from the streams (depth paired by stamp). `paired`: the
        placement of a better instance of the same answer, whose depth this one shares.
        Returns the notes on what is missing, and this placement."""
        node = self.node
        settings = LocateSettings.from_parameters(node.param)
        u, v = answer.u, answer.v
        if paired is not None and paired.depth_m is not None:
            placement = locate_with(paired.model, paired.depth_m, u, v, image_size, settings)
        elif paired is not None:
            placement = Placement(None, list(paired.notes[:1]))  # the same reason: no depth for any instance
        elif options.depth is not None:
            placement = locate_in_depth(options.camera_info, options.depth, u, v, image_size, settings)
        else:
            camera = node.camera
            topic = node.resolve_topic_name("camera_info")
            placement = locate_pixel(camera.camera_info, camera.depth, header.stamp, u, v, image_size, settings, topic)
            if placement.depth_paired is not None:
                node.health.depth_lookup(placement.depth_paired)
        return placement.apply(answer), placement

    # ---- services ----------------------------------------------------------------------------------------
    # `progress` (QueryProgress): given by the actions (actions.py), whose goal and result have the
    # fields of the service's request and response.
    def on_point_to_part(self, request, response, progress: QueryProgress | None = None):
        options, problem = query_options(request)
        if problem:
            answer = Answer(Outcome.BAD_REQUEST, problem, self.node.camera.source_header(request.image))
        else:
            answer = self.answer(
                request.query, request.support_set, request.image, publish=True, options=options, progress=progress
            )
        self.record(answer)
        response.success, response.message, response.header = answer.success, answer.message, answer.header
        response.u, response.v, response.score, response.has_3d = answer.u, answer.v, answer.score, answer.has_3d
        response.point.header = answer.header
        response.point.point.x, response.point.point.y, response.point.point.z = answer.xyz
        outputs = self.node.outputs
        outputs.fill_pose(response, answer)
        response.instances = [outputs.result_message(item, options.return_region) for item in answer.instances]
        response.has_grasp, response.grasp = answer.has_grasp, outputs.grasp_message(answer)
        response.grasp_width_m, response.part_length_m = answer.grasp_width_m, answer.part_length_m
        if options.return_region:
            outputs.fill_region(response, answer)
        return response

    def on_point_to_parts(self, request, response, progress: QueryProgress | None = None):
        """Every query of the request on one frame: its features and MLLM prefix are computed once.
        `success` is false only when nothing could run; each query's own outcome is in its result."""
        from pop_ros.pipeline import PointerError, PointRequest

        node = self.node
        started = time.perf_counter()
        response.header = node.camera.source_header(request.image)
        queries, sets = list(request.queries), list(request.support_sets)
        options, problem = query_options(request)
        outcome = Outcome.BAD_REQUEST
        if not problem:
            outcome, problem = self._check_parts(queries, sets)
        image = None
        if not problem:
            try:
                image, response.header = node.camera.target_image(request.image, float(node.param("max_frame_age")))
            except ImageConversionError as error:
                outcome, problem = image_outcome(error), str(error)
        header = response.header
        sets = sets or [""] * len(queries)
        if not problem:
            with node.models(progress=progress) as held:
                outcome, problem = held.outcome, held.reason
                if held.pointer is not None:
                    requests = [
                        PointRequest(query, name or None, max_instances=options.max_instances, roi=options.roi)
                        for query, name in zip(queries, sets, strict=True)
                    ]
                    try:
                        key = frame_key(request.image, header)
                        results = held.pointer.point_many(image, requests, frame_key=key, progress=progress)
                    except PointerError as error:
                        outcome, problem = Outcome.BAD_REQUEST, str(error)
        if problem:
            response.success, response.message = False, problem
            self.record(Answer(outcome, problem, header))
            return response
        # The last boundary: a cancelled query publishes nothing (each part publishes below).
        (progress or QueryProgress()).stage(PUBLISHING)
        answers = [
            self._part_answer(query, name, result, image, header, options)
            for query, name, result in zip(queries, sets, results, strict=True)
        ]
        node.outputs.publish_markers(answers)  # all parts in one array: each part's markers stay visible
        for index, answer in enumerate(answers):
            for item in answer.instances or [answer]:
                item.query_index = index
                response.instances.append(node.outputs.result_message(item, options.return_region))
        response.results = [node.outputs.result_message(answer, options.return_region) for answer in answers]
        shared_ms = next(
            (r.shared_timings_ms.get("total", 0.0) for r in results if not isinstance(r, PointerError)), 0.0
        )
        answered = sum(answer.success for answer in answers)
        response.success = True
        response.shared_ms = float(shared_ms)
        response.message = (
            f"{answered}/{len(queries)} queries answered in "
            f"{(time.perf_counter() - started) * 1000.0:.0f} ms (shared {shared_ms:.0f} ms)"
        )
        return response

    def _check_parts(self, queries: list, sets: list) -> tuple[Outcome, str]:
        problem = self.node.not_ready_reason()
        if problem:
            return Outcome.NOT_READY, problem
        if not queries:
            return Outcome.BAD_REQUEST, "queries is empty: give at least one query"
        if sets and len(sets) != len(queries):
            return (
                Outcome.BAD_REQUEST,
                f"support_sets has {len(sets)} entries for {len(queries)} queries: give none or one per query",
            )
        return Outcome.OK, ""

    def _part_answer(self, query: str, support_set: str, result, image, header, options: QueryOptions) -> Answer:
        """One part's answer of ~/point_to_parts, published (but for the markers) and recorded."""
        from pop_ros.pipeline import PointerError

        if isinstance(result, PointerError):
            answer = Answer(Outcome.BAD_REQUEST, str(result), header, query=query, support_set=support_set)
        else:
            answer = self.result_answer(result, image, header, options)
            answer.total_ms = result.timings_ms.get("total", 0.0)
            self.publish(answer, image, result.heatmap, markers=False)
        self.record(answer)
        return answer

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
