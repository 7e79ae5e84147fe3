"""Model registry: `@register_model` on a builder, then `create_model(name, num_classes, **kw)`."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from cifarkit.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `builder` under its function name; it takes `num_classes` and keyword options."""
    if builder.__name__ in _MODELS:
        raise ValueError(f"model {builder.__name__!r} registered twice")
    _MODELS[builder.__name__] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, num_classes: int = 100, **kwargs) -> nn.Module:
    try:
        builder = _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None
    try:
        return builder(num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r} does not take these options {sorted(kwargs)}: {e}") from None
