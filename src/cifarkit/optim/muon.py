"""Muon for convolution filters, Nesterov SGD for everything else: airbench94_muon's optimizer.

Muon (Keller Jordan, 2024) replaces a filter's momentum update by its nearest semi-orthogonal matrix -- every
singular value near 1 -- computed by a few Newton-Schulz iterations (bf16 where the hardware has it natively,
fp32 elsewhere), and keeps each filter bank at a
fixed norm (sqrt of its output channels) instead of decaying it. airbench94_muon (KellerJordan/cifar10-airbench)
reaches airbench94's accuracy in 8 epochs instead of 9.9 with it.

One optimizer holds both kinds of groups (a group with `orthogonalize = True` is Muon's), so checkpoints,
resume, the non-finite guard (it restores `momentum_buffer`) and `set_lr` treat it like plain SGD. The SGD
groups compute exactly what `torch.optim.SGD` does with dampening 0.
"""

from __future__ import annotations

import torch

# airbench94_muon's quintic coefficients: chosen to maximise the slope at zero, so three iterations suffice;
# singular values land in roughly [0.5, 1.5] rather than exactly 1, which does not hurt (its docstring).
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware multiplies bf16 natively (CUDA; CPUs with AVX-512 BF16 or AMX), else fp32: on a
    CPU without native bf16 (an AVX2-only Zen 3, say) oneDNN emulates bf16 matrix products, slower than fp32,
    and nothing may run emulated bf16 silently."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu":
        from cifarkit.device import cpu_bf16_flags

        return torch.bfloat16 if cpu_bf16_flags() else torch.float32
    return torch.float32


def orthogonalize(update: torch.Tensor, steps: int = 3, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with `update`'s singular vectors (Newton-Schulz in `dtype`), as a
    2-D tensor of `update`'s shape."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = update.to(dtype)
    x = x / (x.norm() + eps)  # every singular value <= 1, where the iteration converges
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonSGD(torch.optim.Optimizer):
    """Groups with `orthogonalize = True` take Muon steps (4-D filters, flattened per output channel); the others
    take Nesterov/heavy-ball SGD steps with `weight_decay` added to the gradient."""

    def __init__(self, groups: list[dict], lr: float, momentum: float, nesterov: bool = True,
                 ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(groups, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0,
                                      orthogonalize=False))
        self.ns_dtype = ns_dtype  # not state: chosen again from the hardware when a run resumes elsewhere

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, nesterov = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:  # frozen this step (e.g. airbench's whitening bias after 3 epochs)
                    continue
                grad = p.grad
                if group["weight_decay"] and not group["orthogonalize"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(grad)
                direction = grad.add(buffer, alpha=momentum) if nesterov else buffer
                step_lr = lr
                if group["orthogonalize"]:
                    direction, step_lr = self._muon_direction(p, direction, group, lr)
                p.add_(direction, alpha=-step_lr)

    def _muon_direction(self, p: torch.Tensor, direction: torch.Tensor, group: dict, lr: float):
        """The orthogonalized step and its rate, for one filter bank (or head, flattened per output row)."""
        if group.get("muon_norm", "fixed_norm") == "fixed_norm":
            # keep the filter bank at norm sqrt(out_channels): airbench94_muon's stand-in for weight decay
            p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
        elif group["weight_decay"]:  # "decay" (the CIFAR-100 speedrun record): decoupled decay, then the step
            p.mul_(1 - lr * group["weight_decay"])
        flat = orthogonalize(direction.reshape(len(direction), -1), dtype=self.ns_dtype)
        if group.get("muon_norm", "fixed_norm") == "decay":
            lr *= max(1.0, flat.shape[0] / flat.shape[1]) ** 0.5  # the record's aspect-ratio scale
        return flat.view_as(p).to(p.dtype), lr
