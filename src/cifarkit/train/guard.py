"""A bad update never lands, and the host never waits on the device to know it.

The old way asked `loss.item()` after every forward pass: on a GPU that stalls the host until the device
has caught up, every step. Instead, `UpdateGuard` copies (on the device) every tensor a step may change
before the step -- the trainable parameters, buffers such as BatchNorm statistics, the optimizer's
momentum, the averaged weights -- and after the step puts each back wherever the step was not finite
(`torch.where` on a 0-dim device flag: the loss, or the weights the update produced). Non-finite steps are
counted on the device as well; the host reads the count where it syncs anyway (validation passes,
checkpoints), or every step where reading costs nothing (the CPU), so a CPU run still stops at the very step.
A skipped step now leaves BatchNorm statistics untouched too (before, its forward pass had moved them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def ensure_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Create SGD's momentum buffers (zeros) up front, so that the guard can restore them on the first step too.
    Bitwise the same as PyTorch's lazy creation: with dampening 0, zeros * momentum + grad is grad exactly."""
    for group in optimizer.param_groups:
        if group.get("momentum", 0) and not group.get("dampening", 0):
            for p in group["params"]:
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class UpdateGuard:
    def __init__(self, protected: Callable[[], Iterable[torch.Tensor]], device: torch.device):
        self.protected = protected
        self.bad_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self._tensors: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []

    def snapshot(self) -> None:
        """Before the step (before the forward pass: it updates BatchNorm statistics)."""
        self._tensors = list(self.protected())
        if [s.shape for s in self._saved] != [t.shape for t in self._tensors]:
            self._saved = [torch.empty_like(t) for t in self._tensors]
        with torch.no_grad():
            for saved, tensor in zip(self._saved, self._tensors, strict=True):
                saved.copy_(tensor)

    def settle(self, finite: torch.Tensor, step: int) -> None:
        """After the step: keep it where `finite`, else restore the snapshot. No host sync."""
        with torch.no_grad():
            for saved, tensor in zip(self._saved, self._tensors, strict=True):
                tensor.copy_(torch.where(finite, tensor, saved))
            bad = ~finite
            self.bad_steps += bad.long()
            self.first_bad_step.copy_(torch.where(bad & (self.first_bad_step < 0), step, self.first_bad_step))

    def read(self) -> tuple[int, int]:
        """(non-finite steps so far, the first one or -1): one host sync."""
        return int(self.bad_steps.item()), int(self.first_bad_step.item())
