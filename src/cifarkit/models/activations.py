"""Activation functions by name (a registry), for the ELU paper's comparison of rectifiers.

Clevert et al. compare ELU with ReLU, leaky ReLU (LReLU) and the *shifted* ReLU (SReLU, max(-1, x)) -- not
the S-shaped ReLU of other papers. GELU and SiLU are here as modern rows. `param` is the activation's one
number where it has one: ELU's alpha (default 1.0), the leaky ReLU's negative slope (default 0.1, the
paper's MNIST value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn


class ShiftedReLU(nn.Module):
    """The paper's SReLU: max(-1, x), a ReLU shifted down and left by one so that it can be negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp_min(x, -1.0)


ActivationName = Literal["elu", "relu", "leaky_relu", "srelu", "gelu", "silu"]

# name -> (builder taking the optional parameter, the parameter's default or None if it takes none)
ACTIVATIONS: dict[str, tuple[Callable[[float | None], nn.Module], float | None]] = {
    "elu": (lambda alpha: nn.ELU(alpha), 1.0),
    "relu": (lambda _: nn.ReLU(), None),
    "leaky_relu": (lambda slope: nn.LeakyReLU(slope), 0.1),
    "srelu": (lambda _: ShiftedReLU(), None),
    "gelu": (lambda _: nn.GELU(), None),
    "silu": (lambda _: nn.SiLU(), None),
}

# The module types these build: what an activation probe hooks (see cifarkit.train.probe).
ACTIVATION_TYPES = (nn.ELU, nn.ReLU, nn.LeakyReLU, ShiftedReLU, nn.GELU, nn.SiLU)


# Activations that commute with max-pooling, pool(f(x)) == f(pool(x)), gradients included: non-decreasing, and
# where flat, flat with zero gradient (ReLU's zero part, its kink included). Not SReLU: clamp_min passes the
# gradient at exactly -1, so a window tied at -1 after the activation would route it differently. Not GELU/SiLU
# (not monotone). name -> whether it commutes, given its parameter (ELU's alpha, the leaky slope: >= 0 / > 0).
COMMUTES_WITH_MAX: dict[str, Callable[[float], bool]] = {
    "elu": lambda alpha: alpha > 0,
    "relu": lambda _: True,
    "leaky_relu": lambda slope: slope > 0,
}


def commutes_with_max(name: str, param: float | None = None) -> bool:
    check = COMMUTES_WITH_MAX.get(name)
    return check is not None and check(ACTIVATIONS[name][1] if param is None else float(param))


def make_activation(name: str, param: float | None = None) -> nn.Module:
    try:
        build, default = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None
    if param is not None and default is None:
        raise ValueError(f"activation {name!r} takes no parameter (activation_param), got {param}")
    return build(default if param is None else float(param))
