"""The ELU paper's measurement of why: the mean activation of every activation layer on a fixed batch.

Clevert et al. (Figure 2a) plot the median over units of each unit's mean activation during training: ELUs
keep it nearer zero than ReLUs, which is their explanation of the faster learning. With
`train.log_activations`, every evaluation pass measures the same on a fixed batch of held-out images (the
first validation images, or training images without a validation split), in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from cifarkit.device import autocast
from cifarkit.models.activations import ACTIVATION_TYPES

PROBE_IMAGES = 500


class ActivationProbe:
    def __init__(self, images: torch.Tensor):
        self.images = images  # preprocessed, on the device

    @torch.no_grad()
    def measure(self, model: nn.Module, device: torch.device, amp_dtype=None) -> dict[str, float]:
        """{"activations/layerN": median over units, "activations/layerN_mean": mean, and over all layers
        "activations/median_unit" and "activations/mean"}; empty if the model has no activation modules."""
        unit_means: list[torch.Tensor] = []

        def record(module, inputs, output):
            output = output.float()
            dims = [d for d in range(output.dim()) if d != 1]  # every dimension but the units (channels)
            unit_means.append(output.mean(dim=dims) if output.dim() > 1 else output.mean().reshape(1))

        hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]
        was_training = model.training
        model.eval()
        try:
            with autocast(device, amp_dtype):
                model(self.images)
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
        if not unit_means:
            return {}
        out = {}
        for i, means in enumerate(unit_means, start=1):
            out[f"activations/layer{i}"] = float(means.median())
            out[f"activations/layer{i}_mean"] = float(means.mean())
        every = torch.cat(unit_means)
        out["activations/median_unit"] = float(every.median())
        out["activations/mean"] = float(every.mean())
        return out
