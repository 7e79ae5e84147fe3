"""Models: a registry of builders. Importing this package registers every model family."""

from cifarkit.models import airbench, elu_net, resnet  # noqa: F401  (each registers its models)
from cifarkit.models.registry import create_model, list_models, register_model
from cifarkit.models.summary import format_summary, keras_summary

__all__ = ["create_model", "list_models", "register_model", "keras_summary", "format_summary"]
