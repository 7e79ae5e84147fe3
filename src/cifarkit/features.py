"""A trained model's features: the penultimate layer after pooling (`HasFeatures.embed`), what a head for new
classes is taught on and what the outlier score measures distances in.

The fingerprint names the feature extractor (the preprocessing and every weight before the classifier), so that
a head taught on one model is refused by another: two exports of one checkpoint (float32, float16 weights) share
it, a retrained or fine-tuned model does not.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from cifarkit.errors import CifarkitError
from cifarkit.models.protocol import HasFeatures

FINGERPRINT_VERSION = "cifarkit-features-1"


class NoFeaturesError(CifarkitError):
    """The network does not expose its features (a custom model without `embed`/`classify`)."""


def require_features(model: nn.Module) -> HasFeatures:
    if not isinstance(model, HasFeatures):
        raise NoFeaturesError(f"{type(model).__name__} does not expose its features (it has no embed/classify "
                              "methods), so it cannot be taught new classes or give an outlier score")
    return model


def feature_dim(model: nn.Module) -> int:
    """D, the width of the features (the classifier's input), from one pass over a blank picture in eval mode
    (so no BatchNorm statistic moves)."""
    model = require_features(model)
    device, training = next(model.parameters()).device, model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(model.embed(torch.zeros(1, 3, 32, 32, device=device)).shape[1])
    finally:
        model.train(training)


def head_parameter_names(model: nn.Module) -> set[str]:
    """The parameters `classify` uses (found by differentiating it, so no model has to name its head)."""
    model = require_features(model)
    named = list(model.named_parameters())
    device = named[0][1].device
    features = torch.zeros(1, feature_dim(model), device=device)
    frozen = [p for _, p in named if not p.requires_grad]  # airbench's whitening: fixed, but still a weight
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = model.classify(features)
            grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True)
    finally:
        for p in frozen:
            p.requires_grad_(False)
    return {name for (name, _), g in zip(named, grads, strict=True) if g is not None}


def feature_fingerprint(model: nn.Module, preprocess: nn.Module) -> str:
    """sha256 over the preprocessing's fitted tensors and every model tensor the classifier does not use, as
    float32 (so float16-stored exports of one checkpoint share it)."""
    head = head_parameter_names(model)
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for prefix, module, skip in (("preprocess.", preprocess, set()), ("model.", model, head)):
        for name, tensor in sorted(module.state_dict().items()):
            if name in skip or not tensor.is_floating_point():
                continue
            digest.update(json.dumps([prefix + name, list(tensor.shape)]).encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
