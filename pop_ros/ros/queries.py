"""The node's query services: ~/point_to_part, ~/point_to_parts, ~/add_exemplar, ~/list_support_sets.

Each query: the source image (the request's, else a camera frame), then the models through the
node's work slot (the pointer read once, inside it), then the answer: its 3D point and approach pose
(`locate`), the min_score check, the outputs and its outcome in /diagnostics.
"""

from __future__ import annotations

import time

from pop_ros.image_conversion import ImageConversionError
from pop_ros.locate import LocateSettings, locate_pixel
from pop_ros.ros.answers import Answer, Outcome
from pop_ros.ros.camera import Frame, NoFrameError, is_empty_image
from pop_ros.ros.teaching import added_text
from pop_ros_interfaces.srv import AddExemplar, ListSupportSets, PointToPart, PointToParts


def image_outcome(error: ImageConversionError) -> Outcome:
    return Outcome.NO_FRAME if isinstance(error, NoFrameError) else Outcome.BAD_REQUEST


def frame_key(request_image, header) -> str | None:
    """A camera frame is named by its stamp + frame_id (no hashing of the pixels); an image sent
    with the request, or an unstamped frame, by its content (the pipeline hashes it)."""
    if not is_empty_image(request_image) or (header.stamp.sec == 0 and header.stamp.nanosec == 0):
        return None
    return f"{header.frame_id}@{header.stamp.sec}.{header.stamp.nanosec:09d}"


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
        self, query: str, support_set: str, request_image, publish: bool, frame: Frame | None = None, wait=True
    ) -> Answer:
        """One query on the request's image, else on `frame` (default: the latest camera frame).
        `wait` False: answer busy at once instead of waiting for a running query."""
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
        with node.models(wait) as held:
            if held.pointer is None:
                return Answer(held.outcome, held.reason, header)
            try:
                key = frame_key(request_image, header)
                result = held.pointer.point(image, query, support_set=support_set or None, frame_key=key)
            except PointerError as error:
                return Answer(Outcome.BAD_REQUEST, str(error), header)
        answer = self.result_answer(result, image, header)
        answer.total_ms = (time.perf_counter() - started) * 1000.0
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

    def result_answer(self, result, image, header) -> Answer:
        """A pipeline result as an Answer: its 3D point and approach pose, and the min_score check."""
        answer = Answer(
            Outcome.OK,
            "",
            header,
            u=result.u,
            v=result.v,
            score=result.score,
            query=result.query,
            support_set=result.support_set,
        )
        notes = self.locate(answer, image.shape[:2], header)
        min_score = float(self.node.param("min_score"))
        if result.score < min_score:
            answer.outcome = Outcome.REJECTED
            notes.insert(0, f"part not visible: score {result.score:.3f} < min_score {min_score}")
        answer.message = "; ".join(notes) or "ok"
        return answer

    def locate(self, answer: Answer, image_size, header) -> list[str]:
        """Fill `answer`'s 3D point and approach pose for its (u, v) (`pop_ros.locate`, which pop-bag
        shares); returns the notes on what is missing."""
        node, camera = self.node, self.node.camera
        placement = locate_pixel(
            camera.camera_info,
            camera.depth,
            header.stamp,
            answer.u,
            answer.v,
            image_size,
            LocateSettings.from_parameters(node.param),
            node.resolve_topic_name("camera_info"),
        )
        if placement.depth_paired is not None:
            node.health.depth_lookup(placement.depth_paired)
        return placement.apply(answer)

    # ---- services ----------------------------------------------------------------------------------------
    def on_point_to_part(self, request, response):
        answer = self.answer(request.query, request.support_set, request.image, publish=True)
        self.record(answer)
        response.success, response.message, response.header = answer.success, answer.message, answer.header
        response.u, response.v, response.score, response.has_3d = answer.u, answer.v, answer.score, answer.has_3d
        response.point.header = answer.header
        response.point.point.x, response.point.point.y, response.point.point.z = answer.xyz
        self.node.outputs.fill_pose(response, answer)
        return response

    def on_point_to_parts(self, request, response):
        """Every query of the request on one frame: its features and MLLM prefix are computed once.
        `success` is false only when nothing could run; each query's own outcome is in its result."""
        from pop_ros.pipeline import PointerError

        node = self.node
        started = time.perf_counter()
        response.header = node.camera.source_header(request.image)
        queries, sets = list(request.queries), list(request.support_sets)
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
            with node.models() as held:
                outcome, problem = held.outcome, held.reason
                if held.pointer is not None:
                    requests = [(query, name or None) for query, name in zip(queries, sets, strict=True)]
                    try:
                        results = held.pointer.point_many(image, requests, frame_key=frame_key(request.image, header))
                    except PointerError as error:
                        outcome, problem = Outcome.BAD_REQUEST, str(error)
        if problem:
            response.success, response.message = False, problem
            self.record(Answer(outcome, problem, header))
            return response
        answers = [
            self._part_answer(query, name, result, image, header)
            for query, name, result in zip(queries, sets, results, strict=True)
        ]
        node.outputs.publish_markers(answers)  # all parts in one array: each part's markers stay visible
        response.results = [node.outputs.result_message(answer) for answer in answers]
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

    def _part_answer(self, query: str, support_set: str, result, image, header) -> Answer:
        """One part's answer of ~/point_to_parts, published (but for the markers) and recorded."""
        from pop_ros.pipeline import PointerError

        if isinstance(result, PointerError):
            answer = Answer(Outcome.BAD_REQUEST, str(result), header, query=query, support_set=support_set)
        else:
            answer = self.result_answer(result, image, header)
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
