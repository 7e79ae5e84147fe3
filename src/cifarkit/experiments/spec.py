"""What an experiment varies: `--vary KEY=v1,v2` grids, `--space KEY=log:LOW:HIGH` search spaces, and the
recipe file that a chosen set of values becomes.

Values are written as in `--set` (TOML: numbers, true/false, [lists], {tables}, or bare strings). In a value
list, commas inside brackets, braces or quotes do not split it, so `model.kwargs.widths=[32,128,128],[64,256,256]`
is two values; `|` may separate them instead (`a|b|c`), as in a categorical `--space`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from cifarkit.config import Config, load_config, parse_override
from cifarkit.errors import ConfigError


def split_top_level(text: str, separators: str) -> list[str]:
    """Split `text` at `separators` that are not inside [], {} or quotes."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char in separators and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _key_and_text(text: str, flag: str, example: str) -> tuple[str, str]:
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"{flag} expects KEY=VALUES such as {example}, got {text!r}")
    return key.strip(), values.strip()


@dataclass(frozen=True)
class Axis:
    """One `--vary`: a key and its values, kept as written (`raw`) for overrides and names."""

    key: str
    raw: tuple[str, ...]


def parse_vary(text: str) -> Axis:
    key, values = _key_and_text(text, "--vary", "optim.lr=0.05,0.1")
    separator = "|" if len(split_top_level(values, "|")) > 1 else ","
    raw = tuple(split_top_level(values, separator)) if values else ()
    if not raw or any(not r for r in raw):
        raise ConfigError(f"--vary {key}: give one or more values separated by commas (e.g. {key}=a,b), got "
                          f"{values!r}")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"--vary {key}: a value is listed twice in {values!r}")
    return Axis(key, raw)


@dataclass(frozen=True)
class Variant:
    """One cell of the grid without its seed: the overrides that make it, and a folder-safe name."""

    index: int
    overrides: tuple[str, ...]  # "KEY=VALUE" as --set takes them
    name: str

    @property
    def label(self) -> str:
        return ", ".join(self.overrides) or "(recipe as is)"


def _slug(axis_key: str, raw: str) -> str:
    value = re.sub(r"[^A-Za-z0-9.+-]+", "-", raw).strip("-") or "x"
    return f"{axis_key.split('.')[-1]}-{value}"


def grid(axes: list[Axis]) -> list[Variant]:
    """The cartesian product of the axes, first axis slowest; no axes: the recipe itself, one variant."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--vary names {sorted(k for k in keys if keys.count(k) > 1)[0]} twice; list all its "
                          "values in one --vary")
    variants = []
    for index, values in enumerate(itertools.product(*(a.raw for a in axes))):
        overrides = tuple(f"{a.key}={v}" for a, v in zip(axes, values, strict=True))
        slug = "_".join(_slug(a.key, v) for a, v in zip(axes, values, strict=True))[:80] or "recipe"
        variants.append(Variant(index, overrides, f"v{index}-{slug}"))
    return variants


def resolve_variants(recipe: str, base: list[str], variants: list[Variant]) -> list[Config]:
    """Every variant's config, validated now: an unknown key or a bad value stops the sweep before any trial."""
    configs = []
    for variant in variants:
        try:
            configs.append(load_config(recipe, [*base, *variant.overrides]))
        except ConfigError as e:
            raise ConfigError(f"variant {variant.label}: {e}") from None
    return configs


# -- search spaces (tune) ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One `--space`: `KEY=LOW:HIGH` (uniform; integers if both are), `KEY=log:LOW:HIGH` (log-uniform) or
    `KEY=a|b|c` (categorical)."""

    key: str
    kind: str  # "float" | "int" | "categorical"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[str, ...] = ()

    def suggest(self, trial) -> str:
        """Ask an Optuna trial for a value; returns it as --set text."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log))
        return repr(trial.suggest_float(self.key, self.low, self.high, log=self.log))

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.key} in {{{', '.join(self.choices)}}}"
        return f"{self.key} {'log-' if self.log else ''}uniform in [{self.low:g}, {self.high:g}]" + (
            " (integers)" if self.kind == "int" else "")


def _number(text: str, key: str) -> float | int:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"--space {key}: {text!r} is not a finite number")
    return value


def parse_space(text: str) -> Dimension:
    key, spec = _key_and_text(text, "--space", "optim.lr=log:0.1:3")
    choices = split_top_level(spec, "|")
    if len(choices) > 1:
        if any(not c for c in choices) or len(set(choices)) != len(choices):
            raise ConfigError(f"--space {key}: categorical choices must be distinct and non-empty, got {spec!r}")
        return Dimension(key, "categorical", choices=tuple(choices))
    parts = spec.split(":")
    log = parts[0] == "log"
    if log:
        parts = parts[1:]
    if len(parts) != 2:
        raise ConfigError(f"--space {key}: expected LOW:HIGH, log:LOW:HIGH or a|b|c, got {spec!r}")
    low, high = (_number(p, key) for p in parts)
    if not low < high:
        raise ConfigError(f"--space {key}: the low end must be below the high end, got {spec!r}")
    if log and low <= 0:
        raise ConfigError(f"--space {key}: a log range needs a positive low end, got {spec!r}")
    kind = "int" if all(isinstance(v, int) for v in (low, high)) else "float"
    return Dimension(key, kind, float(low), float(high), log)


def check_space(recipe: str, base: list[str], dimensions: list[Dimension]) -> None:
    """Each key must exist and take its range's ends (or every choice): checked before any trial runs."""
    keys = [d.key for d in dimensions]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--space names {sorted(k for k in keys if keys.count(k) > 1)[0]} twice")
    for dim in dimensions:
        values = dim.choices if dim.kind == "categorical" else (
            (str(int(dim.low)), str(int(dim.high))) if dim.kind == "int" else (repr(dim.low), repr(dim.high)))
        for value in values:
            try:
                load_config(recipe, [*base, f"{dim.key}={value}"])
            except ConfigError as e:
                raise ConfigError(f"--space {dim.key}={value}: {e}") from None


# -- writing a recipe ----------------------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} to a recipe")


def recipe_text(extends: str, overrides: list[str], comment: str) -> str:
    """A recipe that `extends` another and sets `overrides` ("a.b.c=VALUE"), grouped by top-level table."""
    tables: dict[str, list[tuple[str, Any]]] = {}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) < 2:
            raise ConfigError(f"cannot write the setting {'.'.join(path)} to a recipe table")
        key = ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else json.dumps(p) for p in path[1:])
        tables.setdefault(path[0], []).append((key, value.value))
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines.append(f"extends = {json.dumps(extends)}")
    for table, items in tables.items():
        lines.append(f"\n[{table}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in items]
    return "\n".join(lines) + "\n"
