"""A run that starts from a trained model's weights instead of random ones (`train.init_from`).

Used to train a model further: more epochs with a schedule of their own, or a last stretch without label
smoothing. The source is anything `cifarkit predict` takes (a shipped model's name, a run folder, a checkpoint).
It must be the same network (name and options) and must have been trained on the same split of the same data with
the same preprocessing: weights trained on another split have seen this run's validation pictures, and every
choice made on them would be flattered.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cifarkit.config import Config
from cifarkit.data.split import split_differences
from cifarkit.errors import CheckpointError, ConfigError
from cifarkit.loading import load_model
from cifarkit.text import printable


def starting_weights(config: Config, preprocess_state: dict,
                     log: Callable[[str], None]) -> dict[str, torch.Tensor] | None:
    """The weights `train.init_from` names, checked against this run (None: a fresh start), on the CPU as loading
    a model builds them (float32, whatever the file stores). `preprocess_state` is this run's preprocessing as
    fitted on its training split."""
    source = config.train.init_from
    if not source:
        return None
    try:
        trained = load_model(source, "cpu")
    except CheckpointError as e:  # loading's own one line, said to be about this setting
        raise CheckpointError(f"train.init_from: {e}") from None
    what = f"train.init_from: {printable(source)}"
    spec = trained.model_spec
    if (spec.name, spec.kwargs) != (config.model.name, config.model.kwargs):
        raise ConfigError(f"{what} is {spec.name} with {spec.kwargs}; this run trains {config.model.name} with "
                          f"{config.model.kwargs}. Start from the same network, or set model.kwargs to match")
    differ = split_differences(config.data, trained.data)
    if differ:
        settings = ", ".join(f"data.{key} = {getattr(trained.data, key)!r}" for key in differ)
        raise ConfigError(f"{what} was trained on another split ({settings}): its weights have seen "
                          "pictures this run would validate on. Set the same data settings")
    if not _same_preprocessing(trained.preprocess.to_state(), preprocess_state):
        raise ConfigError(f"{what} was trained with other preprocessing ({trained.preprocess.config}); set "
                          "preprocess.* to match it")
    log(f"starting from {trained.name} (step {trained.step:,}, sha256 {trained.sha256[:12]})")
    return trained.model.state_dict()


def _same_preprocessing(theirs: dict, ours: dict) -> bool:
    """Same settings and the same fitted statistics (to float32 round-off: the same pictures give them)."""
    if theirs["config"] != ours["config"] or theirs["tensors"].keys() != ours["tensors"].keys():
        return False
    return all(torch.allclose(theirs["tensors"][key].float(), ours["tensors"][key].float(), rtol=1e-5, atol=1e-6)
               for key in theirs["tensors"])
