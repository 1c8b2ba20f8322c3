"""A request to the pipeline, validated: `as_point_request` takes what a caller may pass (a
PointRequest or a (query, support set) pair), `resolve_request` checks it against the settings, the
support library and the target image, and gives what answering it needs (`ResolvedRequest`)."""

from __future__ import annotations

import dataclasses

from pop_ros import core
from pop_ros.pipeline.api import PointerError, PointRequest, Support
from pop_ros.pipeline.settings import MAX_INSTANCES, MAX_QUERY_CHARS, PointerSettings
from pop_ros.supports import SupportError, SupportLibrary, SupportSet, validate_click, validate_image


@dataclasses.dataclass
class ResolvedRequest:
    """A validated request: what answering it needs."""

    query: str
    support_set: SupportSet | None  # the library set as it was when resolved; None: explicit supports
    supports: list[Support]  # the set's exemplars as (image, click), or the explicit supports
    max_shots: int  # K
    max_instances: int = 1
    roi: tuple[int, int, int, int] | None = None  # validated and clipped to the image


def resolve_request(
    request: PointRequest, settings: PointerSettings, image_size, library: SupportLibrary, check_size
) -> ResolvedRequest:
    """Validate one request for a target of `image_size (H, W)` (PointerError with the reason otherwise):
    its support set looked up in `library`, explicit supports checked (`check_size(image, what,
    with_text)` raises for an image the models cannot take)."""
    query, set_name, explicit = request.query, request.support_set, request.supports
    if set_name and explicit:
        raise PointerError("give a support set name or explicit supports, not both")
    if query is not None and not isinstance(query, str):
        raise PointerError(f"query must be a string, got {type(query).__name__}")
    query = (query or "").strip()
    chosen, supports = None, []
    if set_name:
        try:
            chosen = library.get(set_name)
        except SupportError as error:
            raise PointerError(str(error)) from error
        query = query or chosen.query
        supports = [(exemplar.image, exemplar.click) for exemplar in chosen.exemplars]
    elif explicit:
        for image, click in explicit:
            try:
                validate_image(image)
                supports.append((image, validate_click(list(click), image)))
            except SupportError as error:
                raise PointerError(f"support {len(supports)}: {error}") from error
            check_size(image, f"support {len(supports) - 1}", with_text=False)
    if settings.use_text and not query:
        raise PointerError("the query is empty and the support set has no default query")
    if len(query) > MAX_QUERY_CHARS:
        raise PointerError(f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS} are supported")
    if not settings.use_text and not supports:
        raise PointerError("visual-only pointing (use_text false) needs at least one support")
    max_shots = settings.max_shots if request.shots is None else int(request.shots)
    if max_shots < 1:
        raise PointerError(f"shots must be >= 1, got {request.shots}")
    max_instances = int(request.max_instances or 1)
    if not 1 <= max_instances <= MAX_INSTANCES:
        raise PointerError(f"max_instances must be in [0, {MAX_INSTANCES}], got {request.max_instances}")
    roi = None
    if request.roi is not None:
        try:
            roi = core.validate_roi(request.roi, image_size)
        except (TypeError, ValueError) as error:
            raise PointerError(str(error)) from error
    return ResolvedRequest(query, chosen, supports, max_shots, max_instances, roi)


def as_point_request(request) -> PointRequest:
    """A PointRequest, or a (query, support_set) pair where support_set is a name, None or explicit supports."""
    if isinstance(request, PointRequest):
        return request
    if isinstance(request, (tuple, list)) and len(request) == 2:
        query, support = request
        if support is None or isinstance(support, str):
            return PointRequest(query, support)
        return PointRequest(query, supports=list(support))
    raise PointerError(f"a request is a PointRequest or a (query, support_set) pair, got {request!r}")
