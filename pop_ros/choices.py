"""The choices and limits of the POP pipeline's settings, in one place that imports nothing heavy.

`pop_ros.core` and `pop_ros.pipeline` check their arguments against these, and the node's parameter
table offers them; the table is read by `pop_node --help`, which must answer without importing torch.
"""

SIMILARITY_MODES = ("bidirectional", "forward", "backward")  # the paper's correspondence ablation
AGGREGATIONS = ("sum", "mean", "max")  # how the localization heads' smoothed maps combine
SHOT_COMBINATIONS = ("mean", "product")  # how K visual maps combine
HEAD_SETS = ("selected", "all")  # calibrated heads (or the fallback) | every head (ablation)
RETRIEVALS = ("cls", "first")  # which K exemplars of a set: closest by DINO [CLS] | in order
MAX_QUERY_CHARS = 2000  # a part is named in a few words; a longer query only costs prefill time
MAX_FRAME_CACHE_SIZE = 64  # frames whose DINO features and MLLM prefix are kept (GPU memory)
MAX_INSTANCES = 64  # several instances per query: a bound on the work and the answer's size
QUANTIZATIONS = ("none", "int8")  # MLLM weight quantizations (models/quantization.py applies them)
MAX_INSTANCE_RADIUS = 1000.0  # suppression radius in patches: wider than any image's patch grid is pointless
