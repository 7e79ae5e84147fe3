"""Device choice and mixed precision, in one place."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch

from cifarkit.errors import ConfigError

DEVICE_NAME = re.compile(r"(auto|cpu|mps|cuda)(:\d+)?")


def check_device_name(name: str) -> None:
    """The spelling only (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`); whether it exists is checked when used."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name) or (name.startswith(("auto", "mps:"))
                                                                        and ":" in name):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def resolve_device(name: str = "auto") -> torch.device:
    """"auto": CUDA, then Apple MPS, then CPU. A named device that is not available is an error."""
    check_device_name(name)
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
        raise ConfigError(f"device {name} was asked for but no CUDA GPU is available; use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device is mps but Apple MPS is not available; use --device cpu or auto")
    return device


AMP_MODES = ("auto", "bf16", "off")

# CPU feature flags (as Linux names them in /proc/cpuinfo) that run bf16 matrix products in hardware:
# x86 AVX-512 BF16 and AMX, Arm's BF16 extension. Without them oneDNN emulates bf16, slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def _read_cpuinfo(cpuinfo: str | None) -> tuple[str | None, set[str]]:
    """(model name, feature flags) from /proc/cpuinfo's text (read here when None; empty where the OS does not
    say)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return model, flags


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 feature flags this CPU reports (empty where it has none, or where the OS does not say:
    then bf16 is not assumed)."""
    flags = _read_cpuinfo(cpuinfo)[1]
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


RELEVANT_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what sets a CPU's training speed


def describe_cpu(cpuinfo: str | None = None) -> dict:
    """The CPU beside every figure measured on it: model name, the flags that set its training speed (vector
    width, native bf16, AMX), torch's version and its thread count."""
    import platform

    model, flags = _read_cpuinfo(cpuinfo)
    return {"cpu": model or platform.processor() or platform.machine(),
            "flags": [f for f in RELEVANT_CPU_FLAGS if f in flags], "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def choose_autocast(amp: str, device: torch.device, cpuinfo: str | None = None) -> tuple[torch.dtype | None, str]:
    """The autocast dtype for `train.amp` on `device`, and why (said in the run's first log line)."""
    if amp not in AMP_MODES:
        raise ConfigError(f"train.amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "off":
        return None, "off (train.amp = off)"
    if amp == "bf16":
        return torch.bfloat16, "bf16 (train.amp = bf16)"
    if device.type == "cuda":
        return torch.bfloat16, "bf16 (auto: CUDA)"
    if device.type == "cpu":
        flags = cpu_bf16_flags(cpuinfo)
        if flags:
            return torch.bfloat16, f"bf16 (auto: the CPU runs bf16 natively: {', '.join(flags)})"
        return None, "off (auto: the CPU has no native bf16 (avx512_bf16/amx_bf16); bf16 would be emulated)"
    return None, f"off (auto: no bf16 autocast on {device.type})"


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    return choose_autocast(amp, device)[0]


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
