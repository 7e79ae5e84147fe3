"""`Preprocess`: the pixel transform fitted on the training split and reused everywhere after.

uint8 pixels -> scale to [0, 1] -> optional global contrast normalization (per-image centering, optionally
per-image std scaling) -> a fitted normalization: ZCA whitening, per-channel mean/std, or nothing.

It is an `nn.Module` so that it travels inside checkpoints (its buffers plus its config as plain data) and
can be baked into an exported ONNX graph, and so evaluation, prediction and export all apply exactly the
transform training used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from cifarkit.errors import ConfigError
from cifarkit.settings import above, between, setting

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class PreprocessConfig:
    normalize: Literal["zca", "meanstd", "none"] = "meanstd"
    gcn: bool = False  # global contrast normalization: subtract each image's mean over all its pixels
    gcn_scale: bool = False  # ...and divide by that image's standard deviation
    # added to the covariance eigenvalues; see README ("ZCA epsilon")
    zca_epsilon: float = setting(1e-2, check=between(0, 1e3))
    gcn_std_floor: float = setting(1e-7, check=above(0))  # avoids dividing flat images by zero




class Preprocess(nn.Module):
    """Maps uint8 (or float 0..255) NCHW images to the network's float input. Call `fit` before use."""

    def __init__(self, config: PreprocessConfig | None = None):
        super().__init__()
        self.config = config or PreprocessConfig()
        if self.config.gcn_scale and not self.config.gcn:
            raise ConfigError("preprocess.gcn_scale needs preprocess.gcn = true")
        # Buffers of the right shape, so a fitted state dict loads into a fresh instance.
        if self.config.normalize == "zca":
            self.register_buffer("mean", torch.zeros(PIXELS))
            self.register_buffer("whiten", torch.eye(PIXELS))
        elif self.config.normalize == "meanstd":
            self.register_buffer("mean", torch.zeros(3))
            self.register_buffer("std", torch.ones(3))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def _scale_and_gcn(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if self.config.gcn:
            flat = x.flatten(1)
            flat = flat - flat.mean(dim=1, keepdim=True)
            if self.config.gcn_scale:
                flat = flat / flat.std(dim=1, keepdim=True).clamp_min(self.config.gcn_std_floor)
            x = flat.view_as(x)
        return x

    @torch.no_grad()
    def fit(self, images_nhwc: np.ndarray) -> Preprocess:
        """Fit on training images (uint8 NHWC) only: the statistics of exactly the data they will transform."""
        x = self._scale_and_gcn(torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2))
        if self.config.normalize == "zca":
            # float64: the small eigenvalues that whitening divides by are lost in float32 round-off.
            flat = x.flatten(1).double()
            mean = flat.mean(dim=0)
            flat -= mean
            cov = flat.T @ flat / flat.shape[0]
            eigvals, eigvecs = torch.linalg.eigh(cov)
            scale = 1.0 / torch.sqrt(eigvals.clamp_min(0) + self.config.zca_epsilon)
            whiten = (eigvecs * scale) @ eigvecs.T
            self.mean.copy_(mean.float())
            self.whiten.copy_(whiten.float())
        elif self.config.normalize == "meanstd":
            per_channel = x.transpose(0, 1).flatten(1).double()
            self.mean.copy_(per_channel.mean(dim=1).float())
            self.std.copy_(per_channel.std(dim=1).float())
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._scale_and_gcn(x)
        if self.config.normalize == "zca":
            x = ((x.flatten(1) - self.mean) @ self.whiten).view_as(x)
        elif self.config.normalize == "meanstd":
            x = (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        return x

    def to_state(self) -> dict:
        """Plain data for a checkpoint: the config and the fitted tensors."""
        return {"config": asdict(self.config), "tensors": {k: v.cpu() for k, v in self.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict) -> Preprocess:
        pre = cls(PreprocessConfig(**state["config"]))
        pre.load_state_dict(state["tensors"])
        return pre
