"""One config object for a run: frozen dataclasses, filled from a recipe file and `--set key=value` overrides.

A recipe is a TOML file (see `src/cifarkit/recipes/`). It may name another recipe in `extends` and change
only what differs. Unknown keys are errors, so a typo never silently falls back to a default. The resolved
config is saved in every run directory and inside every checkpoint as plain data.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from cifarkit.data.loader import AugmentConfig
from cifarkit.data.preprocess import PreprocessConfig
from cifarkit.data.split import DataConfig
from cifarkit.device import check_device_name
from cifarkit.errors import ConfigError
from cifarkit.files import read_bounded
from cifarkit.models.registry import ModelConfig, check_model_options, dropout_layers
from cifarkit.optim import OptimConfig
from cifarkit.schedules import ScheduleConfig, check_dropout_events
from cifarkit.settings import KEPT, RECOVERY, WHERE, at_least, at_least_below, optional, range_problems, setting, within
from cifarkit.text import printable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_RECIPE = "elu-seed"
S = TypeVar("S")
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes of TOML; more is not a recipe

# Settings renamed since they were first written: old dotted key -> new one. A stored config (a run folder's, a
# checkpoint's, a shipped model's) is read as it is; a recipe or a --set that spells the old name still works and
# says so on stderr.
RENAMED = {"schedule.lr": "schedule.name"}
# Settings added since experiments were first fingerprinted, and the value that computes what a config without
# them did: an experiment's digest leaves them out at that value, so adding a setting never renames a sweep.
ADDED = {"optim.bias_lr": None, "train.select": "val_loss", "train.init_from": None}

@dataclass(frozen=True)
class TrainConfig:
    steps: int = setting(165_000, check=at_least_below(1, 10**9))
    # if set (> 0), overrides `steps`: epochs x (training images // batch size); 0: off (train.steps counts)
    epochs: float | None = setting(None, check=optional(at_least_below(0, 10**5)))
    # fit the run to a wall-clock budget (steps planned from speed); 0: off
    budget_seconds: float | None = setting(None, check=optional(at_least_below(0, 10**8)))
    batch_size: int = setting(100, check=at_least_below(1, 10**6))
    # steps between validation passes, metrics lines and checkpoints
    eval_every: int = setting(500, check=at_least_below(1, 10**9))
    eval_batch_size: int = setting(500, check=at_least_below(1, 10**6))
    seed: int = setting(0, check=within(0, 2**32))
    # "auto" (CUDA, MPS, CPU) | "cuda" | "cuda:1" | "mps" | "cpu"
    device: str = setting("auto", role=KEPT)  # spelling checked with the config: check_device_name
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16, else off
    out_dir: str = setting("runs", role=WHERE)
    run_name: str | None = setting(None, role=WHERE)  # default: <recipe>-<date>-<time>
    # train this many seeds (seed, seed+1, ...) and report mean and standard deviation
    seeds: int = setting(1, check=within(1, 1001))
    compile: bool = False  # torch.compile the model (optional; everything works without it)
    tta: bool = False  # also report flip test-time augmentation (separately from single-view accuracy)
    # Weight averaging: every `ema_every` steps, ema = decay * ema + (1 - decay) * weights (0: off).
    # With `lookahead`, the weights are then reset to the average (airbench's lookahead).
    ema_decay: float = setting(0.0, check=within(0, 1))
    ema_every: int = setting(1, check=at_least(1))
    # decay at step s is ema_decay * (s / total) ** power: no averaging early on
    ema_ramp_power: float = setting(0.0, check=at_least_below(0, 100))
    lookahead: bool = False
    # which validation figure picks the checkpoint the test set is run with (cifarkit.train.results.SELECTIONS)
    select: Literal["val_loss", "val_top1"] = "val_loss"
    # start from a trained model's weights (a shipped name, a run folder or a checkpoint; cifarkit.train.starting)
    # instead of random ones: the same network, trained on the same split. None: a fresh start
    init_from: str | None = None
    # Never lose a run: a checkpoint at every evaluation, and also every N steps and/or T minutes.
    checkpoint_every: int | None = setting(None, check=optional(at_least(1)), role=KEPT)
    checkpoint_minutes: float | None = setting(10.0, check=optional(at_least(0)), role=KEPT)
    # newest step checkpoints kept (best.pt is kept regardless)
    keep_checkpoints: int = setting(3, check=at_least(1), role=KEPT)
    # skip steps whose loss is NaN/inf instead of stopping the run
    skip_nonfinite: bool = setting(False, role=RECOVERY)
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-reproducible resume on CPU)
    sync_batchnorm: bool = False  # with several processes: BatchNorm statistics over the global batch
    # at every evaluation: each activation layer's mean activation on a fixed batch (the ELU paper's Figure 2a),
    # to metrics.jsonl and TensorBoard as activations/...
    log_activations: bool = False

    @property
    def budget(self) -> float | None:
        """The wall-clock budget in seconds, or None for a run of fixed length: train.budget_seconds decoded once
        (None and 0 both mean "no budget")."""
        return self.budget_seconds or None


@dataclass(frozen=True)
class Config:
    recipe: str = DEFAULT_RECIPE
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settings_with(*roles: str) -> tuple[str, ...]:
    """The dotted keys ("train.device") of the settings marked with one of `roles` (WHERE, KEPT, RECOVERY)."""
    return tuple(f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
                 if dataclasses.is_dataclass(section.default_factory)
                 for f in dataclasses.fields(section.default_factory) if f.metadata.get("role") in roles)


# Where and how a run is kept, not what it computes: sweep workers may differ in them, fingerprints leave them out.
PLACE_SETTINGS = settings_with(WHERE, KEPT)
# What `cifarkit train --resume` may change: how the run goes on, never what it computed or where it lives.
RESUMABLE_SETTINGS = settings_with(KEPT, RECOVERY)


def _build(cls, values: dict[str, Any], where: str):
    """Instantiate dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} should be a table of settings, got {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), names, n=1)
        hint = f"; did you mean {where}{close[0]}?" if close else ""
        raise ConfigError(f"unknown setting {where}{printable(str(unknown[0]))}{hint} Valid keys here: "
                          f"{', '.join(sorted(names))}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(value, hint, f"{where}{key}")
    return cls(**kwargs)


@dataclass(frozen=True)
class Override:
    """A `--set` value as TOML read it, and as typed: a text setting takes the text (run_name=nan stays
    "nan", not a float)."""

    value: Any
    raw: str


def _plain(value: Any) -> Any:
    if isinstance(value, Override):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _literal_choices(hint: Any) -> tuple | None:
    """The allowed values of `Literal[...]` or `Literal[...] | None`, else None."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    for arm in get_args(hint):
        if get_origin(arm) is Literal:
            return get_args(arm)
    return None


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed): `int | None` -> (int, True); `list[float]` -> (list[float],
    False)."""
    if get_origin(hint) in (Union, types.UnionType):
        arms = [arm for arm in get_args(hint) if arm is not type(None)]
        return (arms[0] if len(arms) == 1 else hint), len(arms) < len(get_args(hint))  # several arms: unchecked
    return hint, False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# a setting's type -> (does the value have it, what the error says it should be)
_TYPE_CHECKS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (_is_number, "a number"),
    str: (lambda v: isinstance(v, str), "a string"),
    list: (lambda v: isinstance(v, list), "a list"),
    dict: (lambda v: isinstance(v, dict), "a table"),
}


def _check_type(value: Any, hint: Any, where: str) -> Any:
    choices = _literal_choices(hint)
    if choices is not None:
        if isinstance(value, Override):  # a text choice given bare (amp=off) or quoted (amp="off")
            value = value.value if isinstance(value.value, str) else value.raw
        plain = _plain(value)
        if plain is None and type(None) in get_args(hint):
            return None
        if plain not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}; got {plain!r}")
        return plain
    base, optional = _unwrap_optional(hint)
    kind = get_origin(base) or base  # list[float] -> list
    if isinstance(value, Override):  # a text setting takes the text as written (run_name=nan stays "nan")
        value = value.raw if kind is str and not isinstance(value.value, str) else value.value
    value = _plain(value)
    if value is None:
        if not optional:
            raise ConfigError(f"{where} cannot be empty")
        return value
    check = _TYPE_CHECKS.get(kind)
    if check is not None and not check[0](value):
        raise ConfigError(f"{where} should be {check[1]}, got {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value}")
    return value


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def list_recipes() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in resources.files("cifarkit.recipes").iterdir()
                  if p.name.endswith(".toml"))


def _read_recipe(name_or_path: str, seen: tuple[str, ...] = (), base: Path | None = None) -> dict[str, Any]:
    """A recipe's values, `extends` resolved (a path in `extends` is relative to the recipe that names it)."""
    path = Path(name_or_path)
    if base is not None and not path.is_absolute():
        path = base / path
    # anything at that path (a FIFO, a folder, a loop of links) is read, or refused as what it is
    if name_or_path.endswith(".toml") and os.path.lexists(path):
        raw = read_bounded(path, MAX_RECIPE_BYTES, ConfigError, "recipe")
        try:
            text, label = raw.decode("utf-8"), str(path)
        except UnicodeDecodeError as e:
            raise ConfigError(f"recipe {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    elif name_or_path in list_recipes():
        text, label = resources.files("cifarkit.recipes").joinpath(f"{name_or_path}.toml").read_text(), name_or_path
    elif name_or_path.endswith(".toml") or os.path.lexists(path):  # a path, not a name: say what is there
        read_bounded(path, MAX_RECIPE_BYTES, ConfigError, "recipe file")  # raises: missing, a loop, not .toml...
        raise ConfigError(f"recipe file {path} is not a .toml file; name a built-in recipe or a .toml file")
    else:
        close = difflib.get_close_matches(name_or_path, list_recipes(), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown recipe {printable(name_or_path)}; {hint}built-in recipes: "
                          f"{', '.join(list_recipes())} (or pass a path to a .toml file)")
    if label in seen:
        raise ConfigError(f"recipe {label} extends itself (through {' -> '.join(seen)})")
    if len(seen) > 20:
        raise ConfigError(f"recipe {label}: more than 20 levels of `extends`")
    values = _renamed(_parse_toml(text, f"recipe {label}"), f"recipe {label}")
    parent = values.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"recipe {label}: `extends` must name a recipe or a .toml path, got {parent!r}")
        parent_base = Path(label).parent if label.endswith(".toml") else None
        values = _merge(_read_recipe(parent, (*seen, label), parent_base), values)
    values["recipe"] = Path(label).stem if label.endswith(".toml") else label
    return values


def _parse_toml(text: str, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply to read") from None


def parse_override(text: str) -> tuple[list[str], Override]:
    """`train.steps=200` -> (["train", "steps"], Override(200, "200")). Values are TOML (numbers, true,
    [lists], {tables}) or bare strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE such as train.steps=200, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    except RecursionError:
        raise ConfigError(f"--set {key.strip()}: the value is nested too deeply") from None
    if any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"--set expects KEY=VALUE with a dotted key such as train.steps, got {key!r}")
    return key.strip().split("."), Override(value, raw.strip())


def _renamed(values: dict[str, Any], what: str | None) -> dict[str, Any]:
    """`values` with each old key of RENAMED under its new name; `what` (a recipe) is told so, a stored config
    (`what` None) is not. Where both names are set, a recipe is refused and a stored config keeps the new one (set
    later, by a --set on resume)."""
    out = dict(values)
    for old, new in RENAMED.items():
        (section, old_key), new_key = old.split("."), new.split(".", 1)[1]
        table = out.get(section)
        if not isinstance(table, dict) or old_key not in table:
            continue
        table = dict(table)
        value = table.pop(old_key)
        if new_key in table and what is not None:
            raise ConfigError(f"{what} sets both {old} and {new}, one setting under its old and new names; keep {new}")
        table.setdefault(new_key, value)
        out[section] = table
        if what is not None:
            _say_renamed(old, new, what)
    return out


def _say_renamed(old: str, new: str, what: str) -> None:
    print(f"cifarkit: {what} says {old}, which is now {new} (the old name still works; please rename it)",
          file=sys.stderr)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        if ".".join(path) in RENAMED:
            _say_renamed(".".join(path), RENAMED[".".join(path)], "--set")
            path = RENAMED[".".join(path)].split(".")
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        values = _merge(values, nested)
    return values


def _check_across(config: Config) -> None:
    """What one field's range cannot say: options that the chosen model must take, and combinations of parts."""
    check_model_options(config.model.name, config.model.kwargs)
    check_device_name(config.train.device)
    check_dropout_events(config.schedule.dropout_events)
    _check_dropout_layers(config)
    if config.schedule.lr_factors and len(config.schedule.lr_factors) != len(config.schedule.milestones):
        raise ConfigError(f"schedule.lr_factors needs one factor per milestone ({len(config.schedule.milestones)}), "
                          f"got {len(config.schedule.lr_factors)}")
    if config.optim.bias_lr is not None and (config.optim.norm_lr_scale != 1.0 or config.optim.lr <= 0):
        raise ConfigError("optim.bias_lr gives the biases' rate itself: leave optim.norm_lr_scale at 1 (it is the same "
                          "rate as a multiple of optim.lr), and give optim.lr > 0")
    if config.optim.nesterov and config.optim.momentum <= 0:
        raise ConfigError("optim.nesterov needs optim.momentum > 0")
    if config.optim.name == "muon" and (config.optim.l2 or config.optim.l2_first_layer):
        raise ConfigError(MUON_L2_MESSAGE)


def _check_dropout_layers(config: Config) -> None:
    events = config.schedule.dropout_events
    if not events:
        return
    layers = dropout_layers(config.model.name)
    if layers is None:
        raise ConfigError(f"schedule.dropout_events: model {config.model.name!r} has no dropout schedule; remove the "
                          "events (schedule.dropout_events=[])")
    for event in events:
        if "set" in event and len(event["set"]) != layers:
            raise ConfigError(f"schedule.dropout_events: the event at step {event['step']} sets {len(event['set'])} "
                              f"rates; model {config.model.name!r} has {layers} dropout layers (one per stack)")


# Checked with the config, before any run folder exists (the optimizer's builder trusts a loaded config).
MUON_L2_MESSAGE = ("optim.name = \"muon\" keeps filters at a fixed norm instead of decaying them; use "
                   "optim.weight_decay / optim.norm_weight_decay for the SGD-trained parameters, not optim.l2")


def validate(config: Config) -> Config:
    """Every value in range and every name known, or a ConfigError saying which and what is allowed."""
    for section in dataclasses.fields(Config):
        if dataclasses.is_dataclass(section.default_factory):
            for problem in range_problems(getattr(config, section.name), section.name):
                raise ConfigError(problem)
    _check_across(config)
    return config


def config_from_dict(values: dict[str, Any]) -> Config:
    """A validated Config from plain data (a recipe after overrides, or a checkpoint's saved config)."""
    return validate(_build(Config, _renamed(values, None), ""))


def stored_section(config: dict[str, Any], cls: type[S], name: str) -> S:
    """One section of a run's stored config (a checkpoint's), built and range-checked alone: using a model reads
    its data section and its model's spec, and never fails on a training setting this cifarkit reads otherwise
    (a device this machine lacks, an option since renamed). A ConfigError names the setting."""
    section = _build(cls, config.get(name, {}), f"{name}.")
    for problem in range_problems(section, name):
        raise ConfigError(problem)
    return section


def load_config(recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None) -> Config:
    """The resolved config of `recipe` (a built-in name or a .toml path) after `--set` overrides."""
    return config_from_dict(apply_overrides(_read_recipe(recipe), overrides or []))
