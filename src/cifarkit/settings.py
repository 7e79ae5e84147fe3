"""What a setting is beyond its type, written beside it: `setting(default, check=..., role=...)`.

Each part of cifarkit keeps its settings dataclass beside its code (`OptimConfig` in `optim`, `ScheduleConfig` in
`schedules`, ...) and `cifarkit.config` composes them into one run config. A field made with `setting()` carries
in its metadata the range its value must be in (`check`: a function that returns what is wrong, or None) and its
role (WHERE, KEPT, RECOVERY below); types and `Literal` choices are checked from the annotations when a config is
built. This module sits below every part, so each can say its own ranges without importing the config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

Check = Callable[[Any], "str | None"]

# What a setting is, beyond its value. Unmarked settings say what a run computes.
WHERE = "where"  # where the run lives (its folder): fixed for the run's life
KEPT = "kept"  # how it runs and is kept (device, data location, checkpoints): may change on resume
RECOVERY = "recovery"  # changes the computation only when a step goes wrong: may change on resume


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            check: Check | None = None, role: str | None = None) -> Any:
    """A dataclass field with its valid range (`check`) and its role in metadata."""
    metadata = {key: value for key, value in (("check", check), ("role", role)) if value is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def range_problems(section: Any, where: str) -> Iterator[str]:
    """"<where>.<key> <what is wrong>; got <value>" for each field of the dataclass `section` out of range."""
    for f in dataclasses.fields(section):
        check = f.metadata.get("check")
        if check is None:
            continue
        value = getattr(section, f.name)
        problem = check(value)
        if problem:
            yield f"{where}.{f.name} {problem}; got {value!r}"


# The ranges: each returns what is wrong with a value, or None.

def at_least(low) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def above(low) -> Check:
    return lambda v: None if v > low else f"must be > {low}"


def between(low, high) -> Check:
    """low < v <= high: a rate that must be positive and not absurd."""
    return lambda v: None if low < v <= high else f"must be > {low:g} and at most {high:g}"


def within(low, high) -> Check:
    """low <= v < high."""
    return lambda v: None if low <= v < high else f"must be in [{low}, {high})"


def at_least_below(low, high) -> Check:
    """low <= v < high: a count or amount with a lower bound and a sane ceiling."""
    return lambda v: None if low <= v < high else f"must be >= {low} and < {high:g}"


def fraction(v) -> str | None:
    """0 <= v <= 1."""
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def optional(check: Check) -> Check:
    """`check`, or None (the setting's "not set")."""
    return lambda v: None if v is None else check(v)


def step_numbers(v) -> str | None:
    return None if all(isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in v) else \
        "must be a list of step numbers >= 0"


def positive_numbers(v) -> str | None:
    return None if all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f > 0
                       for f in v) else "must be numbers > 0"
