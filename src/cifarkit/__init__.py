"""cifarkit: train, evaluate and use CIFAR-100 / CIFAR-10 image classifiers with PyTorch.

    import cifarkit
    model = cifarkit.load_pretrained()          # a shipped model; no dataset, no training
    model = cifarkit.load_model("runs/RUN")      # or any source: a shipped name, a run folder, a checkpoint
    model.predict("cat.jpg")                     # [[{"label": "cat", "score": 0.97}, ...]]
"""

from cifarkit.errors import CheckpointError, CifarkitError, ConfigError, DatasetError

__version__ = "0.1.0"
__all__ = ["CifarkitError", "DatasetError", "ConfigError", "CheckpointError", "__version__", "load_pretrained",
           "list_pretrained", "load_model", "load_trained_model"]

_LAZY = {"load_pretrained": "cifarkit.loading", "list_pretrained": "cifarkit.pretrained",
         "load_model": "cifarkit.loading", "load_trained_model": "cifarkit.loading"}


def __getattr__(name: str):
    """Imported on first use, so that `import cifarkit` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cifarkit' has no attribute {name!r}")
