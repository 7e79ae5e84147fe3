"""Optimizers (a registry: SGD, and Muon for filters with SGD for the rest), their settings and parameter groups.

`OptimConfig`, the optimizer's settings with their ranges, lives here; `cifarkit.config` composes it into the run
config and checks combinations across parts when a config is loaded. The builders take a validated `OptimConfig`
and check nothing again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cifarkit.models.protocol import HasKernelLikeParameters
from cifarkit.optim.muon import MuonSGD, newton_schulz_dtype
from cifarkit.settings import at_least, at_least_below, between, fraction, optional, setting, within


def _known_optimizer(name: str) -> str | None:
    return None if name in OPTIMIZERS else f"must be one of {', '.join(OPTIMIZERS)}"


@dataclass(frozen=True)
class OptimConfig:
    name: str = setting("sgd", check=_known_optimizer)  # one of OPTIMIZERS (below)
    # at most 1e30: room for divergence experiments (the tests drive runs to non-finite losses on purpose), while
    # the batch-scaled rate times a gradient stays a float32 number (1e300 overflowed inside the optimizer)
    lr: float = setting(0.01, check=between(0, 1e30))
    momentum: float = setting(0.9, check=within(0, 1))
    nesterov: bool = False
    # Keras-style L2 (loss += l2 * sum(w^2) over conv/dense kernels, biases exempt); l2_first_layer overrides
    # it for the first convolution. Implemented as SGD weight decay 2*l2, which has the identical gradient.
    l2: float = setting(0.0, check=at_least_below(0, 100))
    l2_first_layer: float | None = setting(None, check=optional(at_least_below(0, 100)))
    # PyTorch-style decay (grad += wd * w) on kernels, added to the L2 above
    weight_decay: float = setting(0.0, check=at_least_below(0, 1))
    # learning-rate multiplier for biases and normalization parameters
    norm_lr_scale: float = setting(1.0, check=between(0, 1e4))
    # or their rate itself, as the anchors write it (airbench94_muon's bias_lr = 0.053): in optim.lr's units, scaled
    # with the batch as optim.lr is; None: lr x norm_lr_scale
    bias_lr: float | None = setting(None, check=optional(between(0, 1e30)))
    # PyTorch-style decay on biases and normalization parameters
    norm_weight_decay: float = setting(0.0, check=at_least_below(0, 1))
    label_smoothing: float = setting(0.0, check=within(0, 1))
    # train.batch_size is the global batch (all processes together). To keep a learning rate tuned at another
    # batch size, name that size here and how lr follows the batch: "none", "linear" or "sqrt".
    base_batch_size: int | None = setting(None, check=optional(at_least(1)))
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    # optim.name = "muon": the filters' learning rate and momentum (Nesterov); optim.lr, momentum and the
    # decays above then apply to the other parameters, trained by SGD (see cifarkit.optim.muon)
    muon_lr: float = setting(0.24, check=between(0, 100))
    muon_momentum: float = setting(0.6, check=within(0, 1))
    # How a Muon filter is kept in check: "fixed_norm" (airbench94_muon: each filter bank rescaled to norm
    # sqrt(out_channels) before its step) or "decay" (the CIFAR-100 speedrun record: decoupled weight decay
    # muon_weight_decay x lr, the step scaled by sqrt(max(1, fan_out / fan_in)))
    muon_norm: Literal["fixed_norm", "decay"] = "fixed_norm"
    muon_weight_decay: float = setting(0.0, check=at_least_below(0, 1))
    muon_head: bool = False  # the linear head takes Muon steps too (the record) instead of SGD at optim.lr
    # Muon's momentum rises linearly from muon_momentum_start to muon_momentum over the first
    # muon_momentum_warmup of the run (the record: 0.85 -> 0.95 over 15%); 0: constant
    muon_momentum_warmup: float = setting(0.0, check=fraction)
    muon_momentum_start: float = setting(0.85, check=within(0, 1))
    # learning-rate multiplier of the normalization layers' shifts (BatchNorm biases) relative to the other
    # biases and norms (the record's BN-shift rate x 8); 1: one rate for the group
    norm_shift_lr_scale: float = setting(1.0, check=between(0, 1e4))

    @property
    def bias_lr_scale(self) -> float:
        """The biases' and normalization parameters' rate relative to optim.lr, however the recipe wrote it."""
        return self.norm_lr_scale if self.bias_lr is None else self.bias_lr / self.lr


def _trainable_parameters(model: nn.Module):
    """(full name, owning module, parameter) for every parameter that trains, in module order."""
    for prefix, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                yield (f"{prefix}.{name}" if prefix else name), module, param


def _is_kernel(module: nn.Module, param: nn.Parameter, kind=(nn.Conv2d, nn.Linear)) -> bool:
    """A convolution's or linear layer's weight (not its bias)."""
    return isinstance(module, kind) and param is module.weight


def parameter_groups(model: nn.Module, l2: float, l2_first_layer: float | None, weight_decay: float = 0.0,
                     norm_lr_scale: float = 1.0, norm_weight_decay: float = 0.0) -> list[dict]:
    """Kernels (conv/dense weights) get weight decay 2*l2 -- the gradient of Keras's `l2 * sum(w^2)` -- plus
    `weight_decay`; the first convolution's kernel 2*l2_first_layer instead of 2*l2. Biases and normalization
    parameters get `norm_weight_decay` and a learning rate scaled by `norm_lr_scale` (`lr_scale` in the group).
    A model may name parameters to treat as kernels anyway in `kernel_like_parameters` (airbench's whitening
    bias trains at the base rate with the kernels' decay). Frozen parameters are left out."""
    kernel_like = set(model.kernel_like_parameters if isinstance(model, HasKernelLikeParameters) else ())
    first, kernels, others = [], [], []
    seen_kernel = False  # the first trainable conv kernel, before any other kernel, is "first"
    for full_name, module, param in _trainable_parameters(model):
        is_weight = _is_kernel(module, param)
        if is_weight and isinstance(module, nn.Conv2d) and not seen_kernel:
            first.append(param)
        elif is_weight or full_name in kernel_like:
            kernels.append(param)
        else:
            others.append(param)
        seen_kernel = seen_kernel or is_weight
    first_l2 = l2 if l2_first_layer is None else l2_first_layer
    groups = [
        {"params": first, "weight_decay": 2 * first_l2 + weight_decay, "name": "first_kernel", "lr_scale": 1.0},
        {"params": kernels, "weight_decay": 2 * l2 + weight_decay, "name": "kernels", "lr_scale": 1.0},
        {"params": others, "weight_decay": norm_weight_decay, "name": "biases_and_norms", "lr_scale": norm_lr_scale},
    ]
    return [g for g in groups if g["params"]]


def _is_norm_shift(module: nn.Module, param: nn.Parameter) -> bool:
    """A normalization layer's shift (BatchNorm's bias, beta)."""
    return isinstance(module, nn.modules.batchnorm._NormBase) and param is module.bias


def muon_parameter_groups(model: nn.Module, config: OptimConfig, batch_size: int | None) -> list[dict]:
    """airbench94_muon's split: every trainable 4-D filter bank takes Muon steps at `optim.muon_lr` (not scaled
    with the batch: a Muon step has a fixed size whatever the gradient's scale); other kernels (the linear head)
    take SGD at `optim.lr` with `optim.weight_decay` (or Muon steps, with `optim.muon_head`); biases,
    normalization parameters and the whitening bias take SGD at `optim.bias_lr` (or norm_lr_scale x lr) with
    `optim.norm_weight_decay`, the normalization shifts `optim.norm_shift_lr_scale` times that. Every rate
    follows the schedule."""
    base_lr = scaled_lr(config, batch_size) if batch_size else config.lr
    filters, kernels, shifts, others = [], [], [], []
    split_shifts = config.norm_shift_lr_scale != 1.0  # one group otherwise, as before the option existed
    for _, module, param in _trainable_parameters(model):
        if _is_kernel(module, param, nn.Conv2d) or (config.muon_head and _is_kernel(module, param, nn.Linear)):
            filters.append(param)
        elif _is_kernel(module, param, nn.Linear):
            kernels.append(param)
        elif split_shifts and _is_norm_shift(module, param):
            shifts.append(param)
        else:
            others.append(param)
    groups = [
        {"params": filters, "name": "muon_filters", "orthogonalize": True, "momentum": config.muon_momentum,
         "lr_scale": config.muon_lr / base_lr, "muon_norm": config.muon_norm,
         "weight_decay": config.muon_weight_decay},
        {"params": kernels, "name": "kernels", "weight_decay": config.weight_decay, "lr_scale": 1.0},
        {"params": others, "name": "biases_and_norms", "weight_decay": config.norm_weight_decay,
         "lr_scale": config.bias_lr_scale},
        {"params": shifts, "name": "norm_shifts", "weight_decay": config.norm_weight_decay,
         "lr_scale": config.bias_lr_scale * config.norm_shift_lr_scale},
    ]
    return [g for g in groups if g["params"]]


def set_muon_momentum(optimizer: torch.optim.Optimizer, step: int, total_steps: int, config: OptimConfig) -> None:
    """Muon's momentum at `step`: a linear rise over the first optim.muon_momentum_warmup of the run (no-op
    without one). A pure function of the step, so a resumed run needs nothing more."""
    if not config.muon_momentum_warmup:
        return
    rise = min(1.0, step / max(config.muon_momentum_warmup * total_steps, 1e-9))
    momentum = config.muon_momentum_start + (config.muon_momentum - config.muon_momentum_start) * rise
    for group in optimizer.param_groups:
        if group.get("orthogonalize"):
            group["momentum"] = momentum


def _sgd(model: nn.Module, c: OptimConfig, batch_size: int | None) -> torch.optim.Optimizer:
    groups = parameter_groups(model, c.l2, c.l2_first_layer, c.weight_decay, c.bias_lr_scale, c.norm_weight_decay)
    return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov)


def _muon(model: nn.Module, c: OptimConfig, batch_size: int | None) -> torch.optim.Optimizer:
    device = next(model.parameters()).device
    return MuonSGD(muon_parameter_groups(model, c, batch_size), lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                   ns_dtype=newton_schulz_dtype(device))


# name -> builder(model, optim config, global batch size) -> optimizer
OPTIMIZERS: dict[str, Callable[[nn.Module, OptimConfig, int | None], torch.optim.Optimizer]] = {
    "sgd": _sgd, "muon": _muon}


def build_optimizer(model: nn.Module, config: OptimConfig, batch_size: int | None = None) -> torch.optim.Optimizer:
    """`batch_size` (the global batch) lets a builder undo the batch scaling of optim.lr where a rate must not
    follow it (Muon's filters)."""
    return OPTIMIZERS[config.name](model, config, batch_size)


LR_SCALING = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": lambda ratio: ratio**0.5}


def scaled_lr(config: OptimConfig, batch_size: int) -> float:
    """optim.lr, scaled for a global batch that differs from optim.base_batch_size by optim.lr_scaling."""
    if config.base_batch_size is None:
        return config.lr
    return config.lr * LR_SCALING[config.lr_scaling](batch_size / config.base_batch_size)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
