"""Model registry: `@register_model` on a builder, then `create_model(name, num_classes, **kw)`.

What a model may offer beyond `forward` is written down in cifarkit.models.protocol.
"""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cifarkit.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    builder: Callable[..., nn.Module]
    # checks option values when a config is loaded, before anything is built (raises ValueError)
    check_options: Callable[..., None] | None = None
    # how many dropout layers schedule.dropout_events sets (None: the model has no dropout schedule)
    dropout_layers: int | None = None


_MODELS: dict[str, ModelEntry] = {}


@dataclass(frozen=True)
class ModelConfig:
    """Which model a run trains: a registered name and its builder's options (checked against the builder's
    signature when a config is loaded: check_model_options)."""

    name: str = "elu_net_seed"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model builder (e.g. width = 0.25)
    channels_last: bool = False


def register_model(builder: Callable[..., nn.Module] | None = None, *, check_options: Callable[..., None] | None = None,
                   dropout_layers: int | None = None):
    """Register `builder` under its function name; it takes `num_classes` and keyword options, all named in
    its signature (no **kwargs), so that a recipe's options are checked before anything is built.
    `@register_model` or `@register_model(check_options=..., dropout_layers=...)`."""
    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if builder.__name__ in _MODELS:
            raise ValueError(f"model {builder.__name__!r} registered twice")
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()):
            raise ValueError(f"model builder {builder.__name__!r} must name its options (no **kwargs)")
        _MODELS[builder.__name__] = ModelEntry(builder, check_options, dropout_layers)
        return builder

    return register if builder is None else register(builder)


def list_models(pattern: str = "*") -> list[str]:
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def _entry(name: str) -> ModelEntry:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """The options (`model.kwargs`) that model `name` takes, from its builder's signature."""
    parameters = inspect.signature(_entry(name).builder).parameters
    return {key: p for key, p in parameters.items() if key != "num_classes"}


def check_model_options(name: str, kwargs: dict) -> None:
    """Refuse options the builder does not take, before anything is built (a ConfigError naming the valid ones)."""
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(options) or "none"
        raise ConfigError(f"model {name!r} has no option {unknown[0]!r} (model.kwargs); its options: {valid}")
    hints = typing.get_type_hints(_entry(name).builder)
    for key, value in kwargs.items():  # an option annotated with Literal[...] takes only those values
        choices = typing.get_args(hints[key]) if typing.get_origin(hints.get(key)) is typing.Literal else None
        if choices and value not in choices:
            raise ConfigError(f"model {name!r}: model.kwargs.{key} must be one of {', '.join(map(repr, choices))}; "
                              f"got {value!r}")
    check = _entry(name).check_options  # a builder's own check of its values, if it has one
    if check is not None:
        try:
            check(**kwargs)
        except ValueError as e:
            raise ConfigError(f"model {name!r}: {e}") from None


def dropout_layers(name: str) -> int | None:
    """How many dropout layers model `name` has for schedule.dropout_events (None: it has no such schedule)."""
    return _entry(name).dropout_layers


def create_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    check_model_options(name, kwargs)
    try:
        return _entry(name).builder(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:  # a value of the wrong kind or range for that option
        raise ConfigError(f"model {name!r}: bad option value in {kwargs}: {e}") from None
