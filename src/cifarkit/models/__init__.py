"""Models: a registry of builders. Importing this package registers every model family."""

from cifarkit.models import elu_net  # noqa: F401  (registers elu_net_seed, elu_net_paper)
from cifarkit.models.registry import create_model, list_models, register_model
from cifarkit.models.summary import format_summary, keras_summary

__all__ = ["create_model", "list_models", "register_model", "keras_summary", "format_summary"]
