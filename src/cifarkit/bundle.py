"""The model bundle: everything that makes trained weights usable, in one typed, versioned structure.

A training checkpoint is a bundle plus the state that only resuming needs (optimizer, loader, RNG, ...); a
shipped pretrained model is a bundle stored as safetensors + its card; an ONNX export records the bundle's
metadata beside the model (cifarkit.export_metadata: its version and the JSON schema the TypeScript library is
checked against). The trainer writes bundles with `to_state`, and inference, pretrained and export read them with
`from_state`, so the field names live here and in cifarkit.checkpoints.FIELDS (their checks) alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cifarkit.checkpoints import FOR_USE, check_payload


@dataclass(frozen=True)
class ModelBundle:
    config: dict[str, Any]  # the run's config (Config.to_dict())
    model: dict[str, torch.Tensor]  # the weights to use (the averaged ones where the run averaged)
    preprocess: dict[str, Any]  # Preprocess.to_state(): {"config": ..., "tensors": ...}
    class_names: list[str]
    step: int
    coarse_names: list[str] = field(default_factory=list)  # CIFAR-100's superclasses; empty for CIFAR-10
    fine_to_coarse: list[int] | None = None  # each class's superclass index
    val: dict[str, float] = field(default_factory=dict)  # validation figures at `step`; empty before any
    temperature: float = 1.0  # divides the logits before the softmax (cifarkit.calibration); 1: uncalibrated
    outlier: dict | None = None  # {"score", "threshold", "known_rate"} (cifarkit.outlier); None: not fitted

    def to_state(self) -> dict[str, Any]:
        """The bundle's checkpoint fields (plain data and tensors, loadable with weights_only=True)."""
        return {"config": self.config, "model": self.model, "preprocess": self.preprocess,
                "class_names": list(self.class_names), "coarse_names": list(self.coarse_names),
                "fine_to_coarse": self.fine_to_coarse, "step": self.step, "val": self.val,
                "temperature": self.temperature, "outlier": self.outlier}

    @classmethod
    def from_state(cls, state: dict[str, Any], source: object) -> ModelBundle:
        """The bundle in a checkpoint-shaped dict, every field checked (a CheckpointError naming `source` and
        the field otherwise); fields a bundle does not hold (optimizer, ...) are ignored."""
        check_payload(state, source, FOR_USE)
        return cls(config=state["config"], model=state["model"], preprocess=state["preprocess"],
                   class_names=list(state["class_names"]), step=int(state["step"]),
                   coarse_names=list(state.get("coarse_names") or []), fine_to_coarse=state.get("fine_to_coarse"),
                   val=dict(state.get("val") or {}), temperature=float(state.get("temperature", 1.0)),
                   outlier=state.get("outlier"))
