"""Weight averaging: an exponential moving average of the weights, optionally used as lookahead.

Every `every` steps: average = decay * average + (1 - decay) * weights. With lookahead (as in airbench) the
weights are then reset to the average, which damps the noise of very high learning rates. Buffers
(BatchNorm statistics) are copied for a plain EMA; with lookahead their floating-point ones are averaged and
reset like the weights, as airbench94 does with its whole state dict.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverager:
    def __init__(self, model: nn.Module, decay: float, every: int = 1, lookahead: bool = False,
                 ramp_power: float = 0.0):
        self.decay, self.every, self.lookahead, self.ramp_power = decay, every, lookahead, ramp_power
        self.average = copy.deepcopy(model).eval()
        for p in self.average.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int, total_steps: int) -> float:
        """A pure function of the step: with `ramp_power` the average follows the weights closely early on
        (when they move fast and far) and averages more and more towards the end."""
        if self.ramp_power:
            return self.decay * min(1.0, (step + 1) / total_steps) ** self.ramp_power
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Call after optimizer step `step` (0-based)."""
        if (step + 1) % self.every:
            return
        decay = self.decay_at(step, total_steps)
        for avg, live in zip(self.average.parameters(), model.parameters(), strict=True):
            avg.lerp_(live, 1 - decay)
            if self.lookahead:
                live.copy_(avg)
        for avg, live in zip(self.average.buffers(), model.buffers(), strict=True):
            if self.lookahead and avg.is_floating_point():
                avg.lerp_(live, 1 - decay)
                live.copy_(avg)
            else:
                avg.copy_(live)

    def state_dict(self) -> dict:
        return self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.average.load_state_dict(state)
