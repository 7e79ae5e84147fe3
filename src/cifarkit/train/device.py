"""Device choice and mixed precision, in one place."""

from __future__ import annotations

import contextlib

import torch

from cifarkit.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """"auto": CUDA, then Apple MPS, then CPU. A named device that is not available is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is mps but Apple MPS is not available; use --device cpu or auto")
    return device


AMP_MODES = ("auto", "bf16", "off")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp not in AMP_MODES:
        raise ConfigError(f"train.amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name_of(device: torch.device) -> str:
    """The GPU's name for CUDA devices (reported beside every timing), else the device type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
