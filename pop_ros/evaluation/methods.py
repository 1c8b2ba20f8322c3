"""The evaluation's methods (what `pop-eval --methods` names): plain data without torch, so that
`pop-eval --help` can list them without importing the models."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    shots: int  # K supports (0 = the text prior alone)
    settings: tuple = ()  # PointerSettings overrides as (field, value) pairs
    cls_retrieval: bool = False  # give the whole support pool and let DINO [CLS] choose K
    native: bool = False  # the MLLM's own generated point


MAIN_METHODS = (
    Method("native", 0, native=True),
    Method("attention-0shot", 0),
    Method("visual-1shot", 1, (("use_text", False),)),
    Method("pop-1shot", 1),
    Method("pop-3shot", 3),
    Method("pop-3shot-cls", 3, (("retrieval", "cls"),), cls_retrieval=True),
)
# The paper's ablations (its Tab. 5 and 6 are 1-shot): head aggregation, similarity direction;
# plus our K-shot combination.
ABLATION_METHODS = (
    Method("abl-heads-all-mean", 1, (("head_set", "all"), ("aggregation", "mean"))),
    Method("abl-heads-all-max", 1, (("head_set", "all"), ("aggregation", "max"))),
    Method("abl-heads-selected-mean", 1, (("aggregation", "mean"),)),
    Method("abl-heads-selected-max", 1, (("aggregation", "max"),)),
    Method("abl-sim-forward", 1, (("similarity", "forward"),)),
    Method("abl-sim-backward", 1, (("similarity", "backward"),)),
    Method("abl-shots-product-3", 3, (("shot_combination", "product"),)),
)
ALL_METHODS = {method.name: method for method in MAIN_METHODS + ABLATION_METHODS}
