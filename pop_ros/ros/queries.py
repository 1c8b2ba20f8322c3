"""The node's query services: ~/point_to_part, ~/point_to_parts (~/add_exemplar and
~/list_support_sets are the library's: teaching.py).

Each query: the models through the node's work slot (the pointer read once, inside it); holding
them, its capture (capture.py: the request's image, else the newest fresh camera frame, with the
depth and camera_info that belong to it), kept through inference; then the answer: its 3D point and
approach pose (`locate`, from the capture), the min_score check, the outputs (in frame order:
outputs.py) and its outcome in /diagnostics.
"""

from __future__ import annotations

import dataclasses
import time
from collections import namedtuple

from pop_ros.messages.capture import Capture
from pop_ros.messages.image_conversion import ImageConversionError
from pop_ros.pipeline.progress import CAPTURE, PUBLISHING, QueryProgress
from pop_ros.ros.answers import Answer, Outcome
from pop_ros.ros.camera import NoFrameError, is_empty_image
from pop_ros.spatial.grasp import GraspSettings
from pop_ros.spatial.locate import LocateSettings, Placement, add_region, locate_capture, locate_with, score_note
from pop_ros_interfaces.srv import PointToPart, PointToParts

# A result built without instances (by hand, in tests) answers with its single peak.
_Peak = namedtuple("_Peak", "u v score")
# The most queries one ~/point_to_parts call may ask (more are refused with this number): a call holds
# the models for all of them, so every other query waits behind it.
MAX_QUERIES_PER_CALL = 32


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


class Queries:
    def __init__(self, node, callback_group):
        self.node = node
        services = {  # name: (type, callback, whether its calls are queries counted on /diagnostics)
            "~/point_to_part": (PointToPart, self.on_point_to_part, True),
            "~/point_to_parts": (PointToParts, self.on_point_to_parts, True),
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
        newer_than: int | None = None,
        wait=True,
        options: QueryOptions | None = None,
        progress: QueryProgress | None = None,
    ) -> Answer | None:
        """One query on the request's image, else on the capture taken once the models are held.
        `wait` False: answer busy at once instead of waiting for a running query. `newer_than`: a
        frame number; None (nothing ran) when the capture's frame is not newer (continuous mode).
        `progress` (an action goal's): told each stage; its cancel raises QueryCancelled, and nothing
        is published."""
        options = options or QueryOptions()
        stages = progress or QueryProgress()
        from pop_ros.pipeline import PointerError

        node = self.node
        started = time.perf_counter()
        # The source image's header whenever it is known, failures included.
        header = node.camera.source_header(request_image)
        problem = node.not_ready_reason()
        if problem:
            return Answer(Outcome.NOT_READY, problem, header)
        with node.models(wait, progress) as held:
            if held.pointer is None:
                return Answer(held.outcome, held.reason, header)
            try:
                capture = self.take_capture(request_image, options)
                image = node.camera.image_of(capture)
            except ImageConversionError as error:
                return Answer(image_outcome(error), str(error), header)
            if newer_than is not None and capture.seq <= newer_than:
                return None
            header = capture.header
            stages.stage(CAPTURE)
            try:
                result = held.pointer.point(
                    image,
                    query,
                    support_set=support_set or None,
                    frame_key=capture.frame_key(),
                    max_instances=options.max_instances,
                    roi=options.roi,
                    progress=progress,
                )
            except PointerError as error:
                return Answer(Outcome.BAD_REQUEST, str(error), header, capture=capture)
        stages.stage(PUBLISHING)
        answer = self.result_answer(result, image, capture, options)
        answer.total_ms = (time.perf_counter() - started) * 1000.0
        stages.check()  # the last boundary: a cancelled query publishes nothing
        if publish:
            self.publish(answer, image, result.heatmap)
        return answer

    def take_capture(self, request_image, options: QueryOptions) -> Capture:
        """What a query answers about, taken while it holds the models: the request's image with its
        own depth (or the streams' by its stamp), else the camera's newest fresh frame (NoFrameError)."""
        camera, param = self.node.camera, self.node.param
        depth_max_dt = float(param("depth_max_dt"))
        if not is_empty_image(request_image):
            return camera.request_capture(request_image, options.depth, options.camera_info, depth_max_dt)
        return camera.capture(float(param("max_frame_age")), depth_max_dt)

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

    def result_answer(self, result, image, capture: Capture, options: QueryOptions | None = None) -> Answer:
        """A pipeline result as an Answer: its instances (instances[0] is the answer itself), each with
        its 3D point and approach pose, the min_score check, and the part's region and grasp frame."""
        options = options or QueryOptions()
        instances = result.instances or [_Peak(result.u, result.v, result.score)]
        min_score = float(self.node.param("min_score"))
        region = GraspSettings.from_parameters(self.node.param)
        image_size = image.shape[:2]
        header = capture.header
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
                capture=capture,
            )
            notes, placement = self.locate(answer, image_size, capture, options, placement)
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
        self, answer: Answer, image_size, capture: Capture, options: QueryOptions, paired: Placement | None = None
    ) -> tuple[list[str], Placement]:
        """Fill `answer`'s 3D point and approach pose for its (u, v) from the capture's depth and
        camera_info. `paired`: the placement of a better instance of the same answer, whose depth this
        one shares. Returns the notes on what is missing, and this placement."""
        node = self.node
        settings = LocateSettings.from_parameters(node.param)
        u, v = answer.u, answer.v
        if paired is not None and paired.depth_m is not None:
            placement = locate_with(paired.model, paired.depth_m, u, v, image_size, settings)
        elif paired is not None:
            placement = Placement(None, list(paired.notes[:1]))  # the same reason: no depth for any instance
        else:
            topic = node.resolve_topic_name("camera_info")
            placement = locate_capture(capture, u, v, image_size, settings, topic)
            from_streams = options.depth is None  # not the request's own depth
            if placement.depth_paired is not None and from_streams:
                node.health.depth_lookup(placement.depth_paired)
            if placement.depth_paired and from_streams:
                node.health.depth_misfit(placement.misfit)
            if placement.misfit and from_streams:
                node.get_logger().warning(
                    f"depth does not fit the colour image: {placement.misfit}", throttle_duration_sec=10.0
                )
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
        """Every query of the request on one capture: its features and MLLM prefix are computed once.
        `success` is false only when nothing could run; each query's own outcome is in its result."""
        node = self.node
        started = time.perf_counter()
        response.header = node.camera.source_header(request.image)
        queries, sets = list(request.queries), list(request.support_sets)
        options, problem = query_options(request)
        outcome = Outcome.BAD_REQUEST
        if not problem:
            outcome, problem = self._check_parts(queries, sets)
        sets = sets or [""] * len(queries)
        if not problem:
            outcome, problem, capture, image, results = self._run_parts(request.image, queries, sets, options, progress)
        if problem:
            response.success, response.message = False, problem
            self.record(Answer(outcome, problem, response.header))
            return response
        response.header = capture.header
        # The last boundary: a cancelled query publishes nothing (each part publishes below).
        (progress or QueryProgress()).stage(PUBLISHING)
        answers = [
            self._part_answer(query, name, result, image, capture, options)
            for query, name, result in zip(queries, sets, results, strict=True)
        ]
        node.outputs.publish_markers_in_order(answers, capture.header)  # all parts in one array: each stays visible
        for index, answer in enumerate(answers):
            for item in answer.instances or [answer]:
                item.query_index = index
                response.instances.append(node.outputs.result_message(item, options.return_region))
        response.results = [node.outputs.result_message(answer, options.return_region) for answer in answers]
        shared_ms = next((r.shared_timings_ms.get("total", 0.0) for r in results if not _failed(r)), 0.0)
        answered = sum(answer.success for answer in answers)
        response.success = True
        response.shared_ms = float(shared_ms)
        response.message = (
            f"{answered}/{len(queries)} queries answered in "
            f"{(time.perf_counter() - started) * 1000.0:.0f} ms (shared {shared_ms:.0f} ms)"
        )
        return response

    def _run_parts(self, request_image, queries: list, sets: list, options: QueryOptions, progress=None):
        """Holding the models: the capture, then `point_many` on it. (outcome, problem, capture,
        image, results); problem "" when the queries ran."""
        from pop_ros.pipeline import PointerError, PointRequest

        with self.node.models(progress=progress) as held:
            if held.pointer is None:
                return held.outcome, held.reason, None, None, None
            try:
                capture = self.take_capture(request_image, options)
                image = self.node.camera.image_of(capture)
            except ImageConversionError as error:
                return image_outcome(error), str(error), None, None, None
            requests = [
                PointRequest(query, name or None, max_instances=options.max_instances, roi=options.roi)
                for query, name in zip(queries, sets, strict=True)
            ]
            try:
                (progress or QueryProgress()).stage(CAPTURE)
                results = held.pointer.point_many(image, requests, frame_key=capture.frame_key(), progress=progress)
            except PointerError as error:
                return Outcome.BAD_REQUEST, str(error), capture, image, None
        return Outcome.OK, "", capture, image, results

    def _check_parts(self, queries: list, sets: list) -> tuple[Outcome, str]:
        problem = self.node.not_ready_reason()
        if problem:
            return Outcome.NOT_READY, problem
        if not queries:
            return Outcome.BAD_REQUEST, "queries is empty: give at least one query"
        if len(queries) > MAX_QUERIES_PER_CALL:
            return (
                Outcome.BAD_REQUEST,
                f"{len(queries)} queries in one call: at most {MAX_QUERIES_PER_CALL} (MAX_QUERIES_PER_CALL); "
                "split them over several calls",
            )
        if sets and len(sets) != len(queries):
            return (
                Outcome.BAD_REQUEST,
                f"support_sets has {len(sets)} entries for {len(queries)} queries: give none or one per query",
            )
        return Outcome.OK, ""

    def _part_answer(
        self, query: str, support_set: str, result, image, capture: Capture, options: QueryOptions
    ) -> Answer:
        """One part's answer of ~/point_to_parts, published (but for the markers) and recorded."""
        if _failed(result):
            answer = Answer(Outcome.BAD_REQUEST, str(result), capture.header, query=query, support_set=support_set)
        else:
            answer = self.result_answer(result, image, capture, options)
            answer.total_ms = result.timings_ms.get("total", 0.0)
            self.publish(answer, image, result.heatmap, markers=False)
        self.record(answer)
        return answer


def _failed(result) -> bool:
    """A point_many result that is the request's PointerError rather than an answer."""
    from pop_ros.pipeline import PointerError

    return isinstance(result, PointerError)
