"""Model registry: `@register_model` on a builder, then `create_model(name, num_classes, **kw)`."""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable

from torch import nn

from cifarkit.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `builder` under its function name; it takes `num_classes` and keyword options, all named in
    its signature (no **kwargs), so that a recipe's options are checked before anything is built."""
    if builder.__name__ in _MODELS:
        raise ValueError(f"model {builder.__name__!r} registered twice")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()):
        raise ValueError(f"model builder {builder.__name__!r} must name its options (no **kwargs)")
    _MODELS[builder.__name__] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """The options (`model.kwargs`) that model `name` takes, from its builder's signature."""
    parameters = inspect.signature(_builder(name)).parameters
    return {key: p for key, p in parameters.items() if key != "num_classes"}


def check_model_options(name: str, kwargs: dict) -> None:
    """Refuse options the builder does not take, before anything is built (a ConfigError naming the valid ones)."""
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(options) or "none"
        raise ConfigError(f"model {name!r} has no option {unknown[0]!r} (model.kwargs); its options: {valid}")
    hints = typing.get_type_hints(_builder(name))
    for key, value in kwargs.items():  # an option annotated with Literal[...] takes only those values
        choices = typing.get_args(hints[key]) if typing.get_origin(hints.get(key)) is typing.Literal else None
        if choices and value not in choices:
            raise ConfigError(f"model {name!r}: model.kwargs.{key} must be one of {', '.join(map(repr, choices))}; "
                              f"got {value!r}")
    check = getattr(_builder(name), "check_options", None)  # a builder's own check of its values, if it has one
    if check is not None:
        try:
            check(**kwargs)
        except ValueError as e:
            raise ConfigError(f"model {name!r}: {e}") from None


def dropout_layers(name: str) -> int | None:
    """How many dropout layers model `name` has for schedule.dropout_events (None: it has no such schedule)."""
    return getattr(_builder(name), "dropout_layers", None)


def create_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    check_model_options(name, kwargs)
    try:
        return _builder(name)(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:  # a value of the wrong kind or range for that option
        raise ConfigError(f"model {name!r}: bad option value in {kwargs}: {e}") from None
