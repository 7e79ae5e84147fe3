"""A trained model ready for use: network + its own Preprocess + class names, rebuilt from a checkpoint.

Evaluation, prediction and export all start here, so all three apply exactly the preprocessing that
training fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cifarkit.config import Config, config_from_dict
from cifarkit.data.preprocess import Preprocess
from cifarkit.errors import CheckpointError
from cifarkit.models import create_model
from cifarkit.train.checkpoint import file_sha256, load_checkpoint, resolve_checkpoint
from cifarkit.train.metrics import predict_logits


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode
    preprocess: Preprocess
    config: Config
    class_names: list[str]
    coarse_names: list[str]
    fine_to_coarse: list[int] | None
    checkpoint: Path
    sha256: str
    step: int
    val: dict  # the validation figures of the checkpoint; empty if it was saved before any validation pass

    @torch.no_grad()
    def probabilities(self, images_nchw_uint8: torch.Tensor, tta: bool = False, batch_size: int = 500):
        """Softmax outputs for uint8 NCHW images, in batches (flip TTA averages the two views' logits)."""
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(images_nchw_uint8), batch_size):
            x = self.preprocess(images_nchw_uint8[start : start + batch_size].to(device))
            out.append(predict_logits(self.model, x, tta).softmax(dim=1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    from cifarkit.train.device import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device  # a bad name is a one-line error
    checkpoint = resolve_checkpoint(path)
    state = load_checkpoint(checkpoint)
    try:
        config = config_from_dict(state["config"])
        model = create_model(config.model.name, len(state["class_names"]), **config.model.kwargs)
        model.load_state_dict(state["model"])
        preprocess = Preprocess.from_state(state["preprocess"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{checkpoint} does not match the model its config names ({e})") from None
    model.to(device).eval()
    preprocess.to(device)
    return TrainedModel(
        model=model, preprocess=preprocess, config=config, class_names=list(state["class_names"]),
        coarse_names=list(state.get("coarse_names") or []), fine_to_coarse=state.get("fine_to_coarse"),
        checkpoint=checkpoint, sha256=file_sha256(checkpoint), step=int(state["step"]),
        val=dict(state.get("val") or {}),
    )
