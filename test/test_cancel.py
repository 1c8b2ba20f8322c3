"""Cancelling a query: the pipeline stops at the next stage boundary (after the visual encoder,
between the MLLM's decoder layers, before the fusion), and a waiter leaves the work-slot queue at
once. No ROS here: the node's actions (test_node_actions.py) are built on these."""

import threading

import pytest

from pop_ros.pipeline.progress import IMAGE_FEATURES, MLLM_PREFIX, QUERY, REGION, WAITING, QueryCancelled, QueryProgress
from pop_ros.ros.work_slots import WorkSlots
from test.conftest import random_image, wait_for


class Recorder:
    """Counts the pipeline's work after a cancel: decoder layers run, fusions done."""

    def __init__(self, pointer, monkeypatch):
        from pop_ros.pipeline import fusion

        self.layers: list[int] = []
        self.fusions = 0
        self.hooks = [
            layer.register_forward_pre_hook(lambda _m, _a, index=index: self.layers.append(index))
            for index, layer in enumerate(pointer.mllm.decoder_layers())
        ]
        fuse = fusion.fuse_to_instances

        def counted(*args, **kwargs):
            self.fusions += 1
            return fuse(*args, **kwargs)

        monkeypatch.setattr(fusion, "fuse_to_instances", counted)

    def close(self):
        for hook in self.hooks:
            hook.remove()


@pytest.mark.parametrize("cancel_at", [IMAGE_FEATURES, MLLM_PREFIX, QUERY])
def test_a_query_cancelled_in_a_stage_stops_before_the_next(tiny_pointer, rng, monkeypatch, cancel_at):
    tiny_pointer.clear_frame_cache()
    stages = []
    progress = QueryProgress()

    def on_stage(stage, position, elapsed_ms):
        stages.append(stage)
        if stage == cancel_at:
            progress.cancel("test")

    progress._on_stage = on_stage
    recorder = Recorder(tiny_pointer, monkeypatch)
    try:
        with pytest.raises(QueryCancelled, match="test"):
            tiny_pointer.point(random_image(rng, 96, 128), "lid", progress=progress)
        layers_run = list(recorder.layers)
    finally:
        recorder.close()
    assert stages[-1] == cancel_at  # no later stage began
    if cancel_at in (IMAGE_FEATURES, MLLM_PREFIX):
        # The frame's features were being computed: cancelled as the MLLM's first layer begins, at
        # the latest (IMAGE_FEATURES: before the MLLM prefix starts at all).
        assert layers_run in ([], [0])
    if cancel_at == QUERY:
        # The prefix ran; the query's layer 0 began and was stopped by the check before it.
        assert layers_run[-1] == 0 and layers_run.count(0) == 2
    assert recorder.fusions == 0
    # The pointer is free and whole: the next query runs to the end.
    result = tiny_pointer.point(random_image(rng, 96, 128), "lid", progress=QueryProgress())
    assert result.heatmap.shape == (96, 128)


def test_a_query_not_cancelled_reports_every_stage_in_order(tiny_pointer, rng):
    tiny_pointer.clear_frame_cache()
    stages = []
    progress = QueryProgress(lambda stage, position, elapsed_ms: stages.append((stage, elapsed_ms)))
    plain = tiny_pointer.point(random_image(rng, 96, 128), "lid")
    tiny_pointer.clear_frame_cache()
    tracked = tiny_pointer.point(random_image(rng, 96, 128), "lid", progress=progress)
    assert [stage for stage, _ in stages] == [IMAGE_FEATURES, MLLM_PREFIX, QUERY, REGION]
    assert [ms for _, ms in stages] == sorted(ms for _, ms in stages)
    assert tracked.heatmap.shape == plain.heatmap.shape


def test_a_cancel_between_the_mllm_s_layers_ends_the_forward_there(tiny_pointer, rng):
    """Cancelled while the query's layer 0 runs: layer 1 never runs (tiny: 4 layers, heads in 2-3)."""
    tiny_pointer.clear_frame_cache()
    finished = []  # (stage, layer) of every decoder layer that ran to its end
    progress = QueryProgress(lambda stage, position, elapsed_ms: finished.append((stage, None)))

    def layer_done(index):
        def hook(_module, _args, _output):
            stage = progress.stage_name
            finished.append((stage, index))
            if stage == QUERY and index == 0:
                progress.cancel("mid-forward")

        return hook

    layers = tiny_pointer.mllm.decoder_layers()
    hooks = [layer.register_forward_hook(layer_done(index)) for index, layer in enumerate(layers)]
    try:
        with pytest.raises(QueryCancelled, match="mid-forward"):
            tiny_pointer.point(random_image(rng, 96, 128), "lid", progress=progress)
    finally:
        for hook in hooks:
            hook.remove()
    prefix = [layer for stage, layer in finished if stage == MLLM_PREFIX and layer is not None]
    query = [layer for stage, layer in finished if stage == QUERY and layer is not None]
    assert prefix == [0, 1, 2]  # the prefix ran up to the deepest head (its layer 3 stops in attention)
    assert query == [0]  # ... the query's layer 0 ran, was cancelled, and layer 1 never ran
    assert finished[-1] == (QUERY, 0)


# ---- the work slots -----------------------------------------------------------------------------------------
class Waiter(threading.Thread):
    """Asks the slots for the models in its own thread; records what it got and its queue places."""

    def __init__(self, slots, progress=None, timeout_s=30.0):
        super().__init__(daemon=True)
        self.slots, self.timeout_s = slots, timeout_s
        self.places: list[int] = []
        self.progress = progress or QueryProgress(self._on_stage)
        self.got: str | None = None
        self.cancelled = False
        self.release = threading.Event()

    def _on_stage(self, stage, position, elapsed_ms):
        assert stage == WAITING
        self.places.append(position)

    def run(self):
        try:
            with self.slots.hold(4, self.timeout_s, self.progress) as busy:
                self.got = busy
                if not busy:
                    self.release.wait(30)
        except QueryCancelled:
            self.cancelled = True


def test_waiters_get_the_models_in_order_and_are_told_their_place():
    slots = WorkSlots()
    first = Waiter(slots)
    first.start()
    assert wait_for(lambda: first.got == "")
    second, third = Waiter(slots), Waiter(slots)
    second.start()
    assert wait_for(lambda: second.places == [0])
    third.start()
    assert wait_for(lambda: third.places == [1])
    first.release.set()
    assert wait_for(lambda: second.got == "")
    assert wait_for(lambda: third.places == [1, 0])
    assert third.got is None  # still waiting behind the second
    second.release.set()
    assert wait_for(lambda: third.got == "")
    third.release.set()
    for waiter in (first, second, third):
        waiter.join(10)
    assert first.places == [] and not any(w.cancelled for w in (first, second, third))


def test_a_cancelled_waiter_leaves_the_queue_at_once_and_the_next_moves_up():
    slots = WorkSlots()
    holder = Waiter(slots)
    holder.start()
    assert wait_for(lambda: holder.got == "")
    leaving, staying = Waiter(slots), Waiter(slots)
    leaving.start()
    assert wait_for(lambda: leaving.places == [0])
    staying.start()
    assert wait_for(lambda: staying.places == [1])
    leaving.progress.cancel("test")
    leaving.join(10)
    assert not leaving.is_alive() and leaving.cancelled and leaving.got is None  # while the holder still runs
    assert wait_for(lambda: staying.places == [1, 0])
    holder.release.set()
    assert wait_for(lambda: staying.got == "")
    staying.release.set()
    staying.join(10)
    with slots.hold(0, 0.0) as busy:  # everything was released
        assert busy == ""


def test_a_cancel_during_the_support_similarity_stops_before_the_fusion(tiny_pointer, rng, monkeypatch):
    """The region stage has boundaries too: between the supports' similarity, the fusion and the heatmap."""
    from pop_ros.pipeline import fusion

    progress = QueryProgress()
    similarity = fusion.visual_maps

    def cancelled_meanwhile(*args, **kwargs):
        maps = similarity(*args, **kwargs)
        progress.cancel("during similarity")
        return maps

    monkeypatch.setattr(fusion, "visual_maps", cancelled_meanwhile)
    recorder = Recorder(tiny_pointer, monkeypatch)
    try:
        supports = [(random_image(rng, 64, 64), (20.0, 30.0))]
        with pytest.raises(QueryCancelled, match="during similarity"):
            tiny_pointer.point(random_image(rng, 96, 128), "lid", supports=supports, progress=progress)
    finally:
        recorder.close()
    assert recorder.fusions == 0 and progress.stage_name == REGION
