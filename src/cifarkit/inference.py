"""A trained model ready for use: network + its own Preprocess + class names, rebuilt from a checkpoint.

Evaluation, prediction and export all start here, so all three apply exactly the preprocessing that
training fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarkit.bundle import ModelBundle
from cifarkit.config import stored_section
from cifarkit.data.preprocess import Preprocess
from cifarkit.data.split import DataConfig
from cifarkit.errors import CheckpointError, CifarkitError, non_finite_model
from cifarkit.models import create_model
from cifarkit.models.registry import ModelConfig
from cifarkit.tta import predict_logits


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode
    preprocess: Preprocess
    config: dict  # the run's config as it trained (reports quote it; using the model reads `data` and `model_spec`)
    data: DataConfig  # which dataset and which validation split the model was trained and calibrated on
    model_spec: ModelConfig  # the network's registered name and options
    classes: list[str]
    superclasses: list[str]
    fine_to_coarse: list[int] | None
    checkpoint: Path
    sha256: str
    step: int
    val: dict  # the validation figures of the checkpoint; empty if it was saved before any validation pass
    name: str = ""  # the pretrained model's name, or the checkpoint's path
    pretrained: bool = False  # a shipped model (its files live inside the installed package)
    temperature: float = 1.0  # divides the logits before the softmax (cifarkit.calibration); 1: uncalibrated
    # {"score", "threshold", "known_rate"} (cifarkit.outlier): when the model can say "none of these"; None: it
    # has not been calibrated for it (`cifarkit calibrate`)
    outlier: dict | None = None

    @torch.no_grad()
    def logits(self, images_nchw_uint8: torch.Tensor, tta: bool = False, batch_size: int = 500) -> torch.Tensor:
        """Raw logits (before the temperature) for uint8 NCHW images, in batches (flip TTA averages the two
        views' logits); a model whose outputs are not finite is refused."""
        device = next(self.model.parameters()).device
        out = [predict_logits(self.model, self.preprocess(images_nchw_uint8[start : start + batch_size].to(device)),
                              tta).float().cpu()
               for start in range(0, len(images_nchw_uint8), batch_size)]
        return self.logits_are_finite(torch.cat(out) if out else torch.empty(0, len(self.classes)))

    def logits_are_finite(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits`, or the refusal of a model whose outputs are not finite."""
        bad = int((~torch.isfinite(logits).all(dim=1)).sum())
        if bad:  # a NaN is never an answer: it would rank arbitrarily and print as "nan%"
            raise non_finite_model(f"model {self.name or self.checkpoint}", bad, len(logits))
        return logits

    def probabilities(self, images_nchw_uint8: torch.Tensor, tta: bool = False, batch_size: int = 500):
        """Calibrated softmax outputs for uint8 NCHW images."""
        return self.probabilities_from(self.logits(images_nchw_uint8, tta, batch_size))

    def probabilities_from(self, logits: torch.Tensor) -> torch.Tensor:
        probabilities = (logits / self.temperature).softmax(dim=1)
        bad = int((~torch.isfinite(probabilities).all(dim=1)).sum())
        if bad:
            raise non_finite_model(f"model {self.name or self.checkpoint}", bad, len(probabilities))
        return probabilities

    @torch.no_grad()
    def outlier_scores(self, features: torch.Tensor, logits: torch.Tensor,
                       low_level: torch.Tensor | None = None) -> torch.Tensor | None:
        """Each picture's outlier score (higher: less likely one of the classes) from its single-view features,
        raw logits and low-level features (`feature_pass`; what the export computes), or None for a model without
        an outlier record."""
        if self.outlier is None:
            return None
        cached = getattr(self, "_outlier_module", None)  # built once per record: the combined one decodes a bank
        if cached is None or cached[0] is not self.outlier:
            from cifarkit.outlier import outlier_module

            cached = self._outlier_module = (self.outlier, outlier_module(self.outlier, self.temperature))
        return cached[1](features, logits, low_level)

    @torch.no_grad()
    def features(self, images_nchw_uint8: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """The penultimate layer after pooling, (N, D) float32, for uint8 NCHW images (cifarkit.features)."""
        return self.features_and_logits(images_nchw_uint8, batch_size)[0]

    @torch.no_grad()
    def features_and_logits(self, images_nchw_uint8: torch.Tensor,
                            batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """The features and, from the same pass, the raw logits (before the temperature), float32 on the CPU
        (the classifier on top of the features is one small matrix product)."""
        return self.feature_pass(images_nchw_uint8, batch_size)[:2]

    @torch.no_grad()
    def feature_pass(self, images_nchw_uint8: torch.Tensor,
                     batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`features_and_logits` and, from the same pass, the low-level features of a network that has them
        (HasLowLevelFeatures; else None): everything the outlier score reads."""
        from cifarkit.features import require_features
        from cifarkit.models.protocol import HasLowLevelFeatures

        model = require_features(self.model)
        levels = isinstance(model, HasLowLevelFeatures)
        device = next(self.model.parameters()).device
        features, logits, low_level = [], [], []
        for start in range(0, len(images_nchw_uint8), batch_size):
            x = self.preprocess(images_nchw_uint8[start : start + batch_size].to(device))
            low, f = model.embed_levels(x) if levels else (None, model.embed(x))
            features.append(f.float().cpu())
            logits.append(model.classify(f).float().cpu())
            if levels:
                low_level.append(low.float().cpu())
        if not features:
            return torch.empty(0, 0), torch.empty(0, len(self.classes)), None
        return torch.cat(features), torch.cat(logits), torch.cat(low_level) if levels else None

    @property
    def feature_fingerprint(self) -> str:
        from cifarkit.features import feature_fingerprint

        if not hasattr(self, "_fingerprint"):
            self._fingerprint = feature_fingerprint(self.model, self.preprocess)
        return self._fingerprint

    def predict(self, pictures, top_k: int = 5, tta: bool | str = False, fit: str = "squash") -> list[list[dict]]:
        """Ranked [{"label", "score"}] (best first) for each picture: file paths, PIL images, or uint8 arrays
        (one HxWx3 picture or a batch NxHxWx3, any size: each is resized as `cifarkit predict` does). Models
        with superclasses (CIFAR-100) add each class's "superclass"."""
        batch = _model_pixels(pictures, fit)
        if batch is None:
            return []
        indices, values, _ = predict_arrays(self, batch, top_k, tta)
        return [[self._ranked(i, p) for i, p in zip(row_i, row_p, strict=True)]
                for row_i, row_p in zip(indices.tolist(), values.tolist(), strict=True)]

    def assess(self, pictures, top_k: int = 5, tta: bool | str = False, fit: str = "squash") -> list[dict]:
        """`predict`, plus whether each picture looks like one of the classes at all: {"ranked": [...],
        "outlier_score": float, "known": bool} per picture (outlier_score and known are None for a model
        without an outlier record)."""
        batch = _model_pixels(pictures, fit)
        if batch is None:
            return []
        indices, values, _, outlier = predict_arrays(self, batch, top_k, tta, with_outlier=True)
        rows = []
        for n, (row_i, row_p) in enumerate(zip(indices.tolist(), values.tolist(), strict=True)):
            score = None if outlier is None else float(outlier[n])
            rows.append({"ranked": [self._ranked(i, p) for i, p in zip(row_i, row_p, strict=True)],
                         "outlier_score": score,
                         "known": None if score is None else bool(score <= self.outlier["threshold"])})
        return rows

    def superclass_of(self, index: int) -> str | None:
        """The superclass of class `index`, for models that have them (CIFAR-100); None otherwise."""
        if self.fine_to_coarse is None or not self.superclasses:
            return None
        return self.superclasses[self.fine_to_coarse[index]]

    def _ranked(self, index: int, probability: float) -> dict:
        item = {"label": self.classes[index], "score": float(probability)}
        superclass = self.superclass_of(index)
        if superclass is not None:
            item["superclass"] = superclass
        return item


def _model_pixels(pictures, fit: str) -> np.ndarray | None:
    """`predict`'s pictures (one, a list, or an NxHxWx3 batch) as the uint8 NHWC 32x32 batch the model takes;
    None for an empty list."""
    from cifarkit.images import as_model_pixels

    several = isinstance(pictures, (list, tuple)) or (isinstance(pictures, np.ndarray) and pictures.ndim == 4)
    batch = [as_model_pixels(p, fit) for p in (pictures if several else [pictures])]
    return np.stack(batch) if batch else None


def predict_arrays(trained: TrainedModel, images_nhwc: np.ndarray, top_k: int = 5, tta: bool = False,
                   with_outlier: bool = False):
    """Top-k (class index, probability) per image, plus the full probability matrix (and, `with_outlier`, the
    outlier scores, None for a model without an outlier record)."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2)
    outlier = None
    if with_outlier and trained.outlier is not None:  # the score is the single view's, as the export's
        features, logits, low_level = trained.feature_pass(x)
        trained.logits_are_finite(logits)
        outlier = trained.outlier_scores(features, logits, low_level).numpy()
        if tta:
            logits = trained.logits(x, tta=tta)
    else:
        logits = trained.logits(x, tta=tta)
    probabilities = trained.probabilities_from(logits)
    k = min(top_k, probabilities.shape[1])
    top = probabilities.topk(k, dim=1)
    answer = top.indices.numpy(), top.values.numpy(), probabilities.numpy()
    return (*answer, outlier) if with_outlier else answer


def trained_model_from_bundle(bundle: ModelBundle, source: Path, sha256: str, device: str | torch.device = "cpu",
                              name: str | None = None) -> TrainedModel:
    """A TrainedModel from a bundle (a training checkpoint's, or a shipped pretrained model's)."""
    from cifarkit.device import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device  # a bad name is a one-line error
    try:
        spec = ModelConfig(name=bundle.model_spec["name"], kwargs=bundle.model_spec["kwargs"])
        data = stored_section(bundle.config, DataConfig, "data")
        model = create_model(spec.name, len(bundle.classes), **spec.kwargs)
        model.load_state_dict(bundle.model)
        preprocess = Preprocess.from_state(bundle.preprocess)
    except (KeyError, RuntimeError, TypeError, ValueError, CifarkitError) as e:
        raise CheckpointError(f"{source} does not match the model it names ({e})") from None
    model.to(device).eval()
    preprocess.to(device)
    return TrainedModel(
        model=model, preprocess=preprocess, config=bundle.config, data=data, model_spec=spec, classes=bundle.classes,
        superclasses=bundle.superclasses, fine_to_coarse=bundle.fine_to_coarse, checkpoint=source, sha256=sha256,
        step=bundle.step, val=bundle.val, name=name or str(source), pretrained=name is not None,
        temperature=bundle.temperature, outlier=bundle.outlier,
    )
