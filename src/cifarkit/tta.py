"""Test-time augmentation: logits averaged over augmented views of each image (used by training's final test,
evaluation, prediction and export alike)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _single_view(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).float()


def _mirror(model, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).float() + model(x.flip(3)).float())


def _mirror_translate(model, x: torch.Tensor) -> torch.Tensor:
    """airbench94's level-2 test-time augmentation: the mirror pair (weight 1/2) and the mirror pairs of the
    image shifted by one pixel up-left and down-right (reflect padding; weight 1/4 each): 6 views."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :h, :w], padded[:, :, 2:, 2:]]
    return 0.5 * _mirror(model, x) + 0.25 * sum(_mirror(model, s) for s in shifted)


# Test-time augmentation: name -> logits of a batch. `True` means "flip" (the mirror pair).
TTA_MODES = {"none": _single_view, "flip": _mirror, "flip_translate": _mirror_translate}


def tta_mode(tta: bool | str | None) -> str:
    mode = {True: "flip", False: "none", None: "none"}.get(tta, tta) if not isinstance(tta, str) else tta
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MODES)}")
    return mode


def predict_logits(model, x: torch.Tensor, tta: bool | str = False) -> torch.Tensor:
    """float32 logits; with `tta` ("flip" or True, "flip_translate"), averaged over augmented views."""
    return TTA_MODES[tta_mode(tta)](model, x)
