"""cifarkit: train, evaluate and use CIFAR-100 / CIFAR-10 image classifiers with PyTorch."""

from cifarkit.errors import CheckpointError, CifarkitError, ConfigError, DatasetError

__version__ = "0.1.0"
__all__ = ["CifarkitError", "DatasetError", "ConfigError", "CheckpointError", "__version__"]
