"""Random-weight models of a real shape, built in about a minute instead of twenty.

transformers' own initialisation of a 3.75B-parameter model on a CPU (Kaiming/normal per layer,
then `post_init`) takes many minutes and is not what a benchmark needs: random weights change no
FLOP. Here the parameters are declared on the `meta` device (no memory, no init) while buffers
(RoPE frequencies and the like, computed in `__init__`) stay real, then every parameter is
materialised once on the target device and filled from one seeded generator: a cheap `uniform_`
with the spread of a 0.02-std normal, ones for 1-D weights (norms), zeros for biases. Tied
parameters (one `Parameter` object held by two modules) are materialised once, so they stay tied.
Two builds with one seed are equal.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

WEIGHT_STD = 0.02  # transformers' usual `initializer_range`
_UNIFORM_BOUND = WEIGHT_STD * 3**0.5  # uniform(-b, b) has std b / sqrt(3)


@contextlib.contextmanager
def parameters_on_meta():
    """Inside: every parameter a module registers lands on the meta device (its initialisers then
    cost nothing); buffers are created where they would be, with their real values."""
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param):
        original(module, name, param)
        if param is not None and not param.is_meta:
            meta = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
            module._parameters[name] = meta

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _fill(tensor: torch.Tensor, name: str, generator: torch.Generator) -> None:
    if tensor.dim() == 1 and name.endswith("bias"):
        tensor.zero_()
    elif tensor.dim() == 1 and name.endswith("weight"):
        tensor.fill_(1.0)  # norms: unit scale keeps activations in range over many layers
    elif tensor.is_floating_point():
        tensor.uniform_(-_UNIFORM_BOUND, _UNIFORM_BOUND, generator=generator)
    else:
        tensor.zero_()


@torch.no_grad()
def materialise(model: nn.Module, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Replace every meta parameter of `model` by a seeded random one on `device` in `dtype`
    (floating parameters only; others keep their dtype). Buffers move to `device`, values kept.
    Deterministic for one (seed, device); a parameter shared by several modules stays shared."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    made: dict[int, nn.Parameter] = {}
    for module_name, module in model.named_modules():
        for name, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            real = made.get(id(param))
            if real is None:
                target_dtype = dtype if param.is_floating_point() else param.dtype
                tensor = torch.empty(param.shape, dtype=target_dtype, device=device)
                _fill(tensor, f"{module_name}.{name}", generator)
                # requires_grad as declared (True), as from_pretrained leaves it: torch's CPU matmul
                # of a (1, 1, K) input by a frozen (N, K) weight takes a bmm path that first copies the
                # whole transposed weight (seconds for a 152k-vocabulary lm_head), a cost real
                # checkpoints do not pay.
                real = made[id(param)] = nn.Parameter(tensor, requires_grad=param.requires_grad)
            module._parameters[name] = real
    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:  # their dtype is the model's choice (RoPE frequencies stay float32)
                module._buffers[name] = buffer.to(device=device)
    return model


def build_random(model_class, config, device: torch.device | str, dtype: torch.dtype, seed: int = 0, **kwargs):
    """`model_class._from_config(config)` with seeded random weights, built fast (see the module doc)."""
    with parameters_on_meta():
        model = model_class._from_config(config, dtype=dtype, **kwargs)
    return materialise(model, device, dtype, seed).eval()
