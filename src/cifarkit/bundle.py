"""The model bundle: everything that makes trained weights usable, in one typed, versioned structure.

A training checkpoint is a bundle plus the state that only resuming needs (optimizer, loader, RNG, ...); a
shipped pretrained model is a bundle stored as safetensors + its card; an ONNX export records the bundle's
metadata beside the model (cifarkit.export_metadata: its version and the JSON schema the TypeScript library is
checked against). The trainer writes bundles with `to_state`, and inference, pretrained and export read them with
`from_state`, so the field names live here and in cifarkit.checkpoints.FIELDS (their checks) alone, spelled as the
export's metadata and the TypeScript library spell them (`classes`, `superclasses`; older files' spellings are
read by cifarkit.checkpoints.current_names).

Using a model reads two things of the run's config: the model's spec (`model_spec`: its registered name and
options) and the data section (which dataset, which validation split). Neither needs the rest of the training
config to be valid today, so a model trained by an older cifarkit loads even where its training settings changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cifarkit.checkpoints import FOR_USE, check_payload
from cifarkit.errors import CheckpointError


@dataclass(frozen=True)
class ModelBundle:
    config: dict[str, Any]  # the run's config (Config.to_dict())
    model: dict[str, torch.Tensor]  # the weights to use (the averaged ones where the run averaged)
    model_spec: dict[str, Any]  # what builds the network: {"name": registered model, "kwargs": its options}
    preprocess: dict[str, Any]  # Preprocess.to_state(): {"config": ..., "tensors": ...}
    classes: list[str]
    step: int
    superclasses: list[str] = field(default_factory=list)  # CIFAR-100's superclasses; empty for CIFAR-10
    fine_to_coarse: list[int] | None = None  # each class's superclass index
    val: dict[str, float] = field(default_factory=dict)  # validation figures at `step`; empty before any
    temperature: float = 1.0  # divides the logits before the softmax (cifarkit.calibration); 1: uncalibrated
    outlier: dict | None = None  # {"score", "threshold", "known_rate"} (cifarkit.outlier); None: not fitted

    def to_state(self) -> dict[str, Any]:
        """The bundle's checkpoint fields (plain data and tensors, loadable with weights_only=True)."""
        return {"config": self.config, "model": self.model, "model_spec": self.model_spec,
                "preprocess": self.preprocess,
                "classes": list(self.classes), "superclasses": list(self.superclasses),
                "fine_to_coarse": self.fine_to_coarse, "step": self.step, "val": self.val,
                "temperature": self.temperature, "outlier": self.outlier}

    @classmethod
    def from_state(cls, state: dict[str, Any], source: object) -> ModelBundle:
        """The bundle in a checkpoint-shaped dict, every field checked (a CheckpointError naming `source` and
        the field otherwise); fields a bundle does not hold (optimizer, ...) are ignored."""
        check_payload(state, source, FOR_USE)
        return cls(config=state["config"], model=state["model"], model_spec=_model_spec(state, source),
                   preprocess=state["preprocess"],
                   classes=list(state["classes"]), step=int(state["step"]),
                   superclasses=list(state.get("superclasses") or []), fine_to_coarse=state.get("fine_to_coarse"),
                   val=dict(state.get("val") or {}), temperature=float(state.get("temperature", 1.0)),
                   outlier=state.get("outlier"))


def model_spec_of(config: dict[str, Any]) -> dict[str, Any]:
    """The model's spec in a run's config (as Config.to_dict() writes it)."""
    model = config.get("model")
    return {"name": model.get("name"), "kwargs": dict(model.get("kwargs") or {})} if isinstance(model, dict) else {}


def _model_spec(state: dict[str, Any], source: object) -> dict[str, Any]:
    """The stored spec, or (a file from before bundles stored it) the one in the run's config."""
    spec = state.get("model_spec") or model_spec_of(state["config"])
    if not isinstance(spec.get("name"), str) or not isinstance(spec.get("kwargs"), dict):
        raise CheckpointError(f"{source} does not say which model it holds (no model name in its config); the file "
                              "is damaged or crafted")
    return {"name": spec["name"], "kwargs": dict(spec["kwargs"])}
