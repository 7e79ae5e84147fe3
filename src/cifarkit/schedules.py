"""Schedules as pure functions of the optimizer step (0-based: step s is the (s+1)-th update).

`lr_at(step, base_lr, total_steps, config)` and `dropout_at(step, initial, events)` hold no state, so resume
needs only the step counter, and each boundary is a unit test. `ScheduleConfig`, the schedule's settings, lives
here; `cifarkit.config` composes it into the run config and checks the dropout events (check_dropout_events, here)
when a config is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cifarkit.errors import ConfigError
from cifarkit.settings import (
    at_least_below,
    between,
    fraction,
    optional,
    positive_numbers,
    setting,
    step_numbers,
    within,
)


def _known_schedule(name: str) -> str | None:
    return None if name in LR_SCHEDULES else f"must be one of {', '.join(LR_SCHEDULES)}"


@dataclass(frozen=True)
class ScheduleConfig:
    # the learning rate's shape over the run: one of LR_SCHEDULES (below); was `schedule.lr`, still read
    name: str = setting("step", check=_known_schedule)
    # "step": multiply by gamma at each of these steps
    milestones: list[int] = setting(default_factory=list, check=step_numbers)
    gamma: float = setting(0.1, check=between(0, 1e3))
    # "step" with factors: after the k-th milestone the lr is lr_factors[k-1] x the base (instead of gamma**k)
    lr_factors: list[float] = setting(default_factory=list, check=positive_numbers)
    warmup_steps: int = setting(0, check=at_least_below(0, 10**9))
    # warm-up length as a fraction of the run (used when warmup_steps is 0)
    warmup_fraction: float = setting(0.0, check=within(0, 1))
    # lr at step 0 as a fraction of the peak (None: 1/warmup)
    warmup_start_fraction: float | None = setting(None, check=optional(fraction))
    # "cosine" / "linear" / "wsd": the lr reached at the last step, as a fraction
    final_lr_fraction: float = setting(0.0, check=at_least_below(0, 1e3))
    # "wsd" (warmup-stable-decay): after the warm-up, the peak until the last cooldown_fraction of the run, then
    # a linear decay to final_lr_fraction
    cooldown_fraction: float = setting(0.0, check=fraction)
    # Dropout events in optimizer steps: {step = N, set = [rates per stack]} or {step = N, scale = f}.
    dropout_events: list[dict[str, Any]] = setting(default_factory=list)


def _step(progress_step: int, total: int, c: ScheduleConfig) -> float:
    passed = sum(progress_step >= m for m in c.milestones)
    factors = c.lr_factors
    if factors:
        return factors[passed - 1] if passed else 1.0
    return c.gamma ** passed


def _constant(step: int, total: int, c: ScheduleConfig) -> float:
    return 1.0


def warmup_steps(total: int, c: ScheduleConfig) -> int:
    return c.warmup_steps or int(c.warmup_fraction * total)  # floor, as airbench94


def _progress_after_warmup(step: int, total: int, c: ScheduleConfig) -> float:
    warmup = warmup_steps(total, c)
    return min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)


def _cosine(step: int, total: int, c: ScheduleConfig) -> float:
    t = _progress_after_warmup(step, total, c)
    return c.final_lr_fraction + (1 - c.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t))


def _linear(step: int, total: int, c: ScheduleConfig) -> float:
    return 1.0 + (c.final_lr_fraction - 1.0) * _progress_after_warmup(step, total, c)


def _wsd(step: int, total: int, c: ScheduleConfig) -> float:
    """Warmup-stable-decay (the CIFAR-100 speedrun record): the peak after the warm-up, then a linear decay over
    the last `cooldown_fraction` of the run to `final_lr_fraction`."""
    cooldown = c.cooldown_fraction * total
    into = step - (total - cooldown)
    if cooldown <= 0 or into < 0:
        return 1.0
    return 1.0 + (c.final_lr_fraction - 1.0) * min(into / cooldown, 1.0)


# name -> multiplier of the base learning rate at a step (after warm-up).
LR_SCHEDULES: dict[str, Callable[[int, int, ScheduleConfig], float]] = {
    "step": _step,
    "constant": _constant,
    "cosine": _cosine,
    "linear": _linear,
    "wsd": _wsd,
}


def lr_at(step: int, base_lr: float, total_steps: int, config: ScheduleConfig) -> float:
    return base_lr * warmup_ramp(step, total_steps, config) * LR_SCHEDULES[config.name](step, total_steps, config)


def warmup_ramp(step: int, total_steps: int, config: ScheduleConfig) -> float:
    """The warm-up multiplier: from `warmup_start_fraction` at step 0 up to 1 at the end of the warm-up
    (airbench94: 0.2 + 0.8 * step / warmup); without a start fraction, (step + 1) / warmup."""
    warmup = warmup_steps(total_steps, config)
    if not warmup or step >= warmup:
        return 1.0
    start = config.warmup_start_fraction
    if start is None:
        return (step + 1) / warmup
    return start + (1.0 - start) * step / warmup


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_dropout_events(events: Sequence) -> None:
    """The shape of each event (the number of rates is checked against the model in `validate_dropout_events`)."""
    for event in events:
        keys = set(event) if isinstance(event, dict) else set()
        if "step" not in keys or len(keys & {"set", "scale"}) != 1 or keys - {"step", "set", "scale"}:
            raise ConfigError(f"dropout event {event} should be {{step = N, set = [...]}} or {{step = N, scale = f}}")
        if not isinstance(event["step"], int) or isinstance(event["step"], bool) or event["step"] < 0:
            raise ConfigError(f"dropout event {event}: step must be an integer >= 0")
        if "set" in event and not (isinstance(event["set"], list) and all(_is_number(r) and 0 <= r < 1
                                                                          for r in event["set"])):
            raise ConfigError(f"dropout event {event}: set must be a list of rates in [0, 1)")
        if "scale" in event and not (_is_number(event["scale"]) and event["scale"] >= 0):
            raise ConfigError(f"dropout event {event}: scale must be a number >= 0")


def validate_dropout_events(events: Sequence[dict], num_stacks: int) -> None:
    check_dropout_events(events)
    for event in events:
        if "set" in event and len(event["set"]) != num_stacks:
            raise ConfigError(f"dropout event at step {event['step']} sets {len(event['set'])} rates; "
                              f"the model has {num_stacks} dropout layers")


def dropout_at(step: int, initial: Sequence[float], events: Sequence[dict]) -> list[float]:
    """Per-layer dropout rates at `step`: events whose step has been reached apply in step order.
    `set` replaces the rates; `scale` multiplies them. Rates are capped below 1 (1 would drop everything)."""
    rates = [float(r) for r in initial]
    for event in sorted(events, key=lambda e: e["step"]):
        if step < event["step"]:
            break
        if "set" in event:
            rates = [float(r) for r in event["set"]]
        else:
            rates = [r * float(event["scale"]) for r in rates]
    return [min(r, 0.95) for r in rates]
