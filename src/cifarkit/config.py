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
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from cifarkit.data.loader import AugmentConfig
from cifarkit.data.preprocess import PreprocessConfig
from cifarkit.data.specs import DATASETS
from cifarkit.device import check_device_name
from cifarkit.errors import ConfigError
from cifarkit.files import read_bounded
from cifarkit.models.registry import check_model_options, dropout_layers
from cifarkit.optim import OPTIMIZERS
from cifarkit.schedules import LR_SCHEDULES, check_dropout_events
from cifarkit.text import printable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_RECIPE = "elu-seed"
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes of TOML; more is not a recipe

# What a setting is, beyond its value (dataclass field metadata). Unmarked settings say what a run computes.
WHERE = {"role": "where"}  # where the run lives (its folder): fixed for the run's life
KEPT = {"role": "kept"}  # how it runs and is kept (device, data location, checkpoints): may change on resume
RECOVERY = {"role": "recovery"}  # changes the computation only when a step goes wrong: may change on resume


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar100"  # "cifar100" | "cifar10"
    # extracted folder or .tar.gz; else $CIFARKIT_DATA_DIR, the cache, a download
    data_dir: str | None = field(default=None, metadata=KEPT)
    download: bool = field(default=True, metadata=KEPT)
    val_per_class: int | None = None  # held-out validation images per class; None: 50 (CIFAR-100), 500 (CIFAR-10)
    split_seed: int = 0
    train_subset: int | None = None  # use only the first N training images (quick experiments, tests)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "elu_net_seed"
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the model builder (e.g. width = 0.25)
    channels_last: bool = False


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # see cifarkit.optim.OPTIMIZERS
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    # Keras-style L2 (loss += l2 * sum(w^2) over conv/dense kernels, biases exempt); l2_first_layer overrides
    # it for the first convolution. Implemented as SGD weight decay 2*l2, which has the identical gradient.
    l2: float = 0.0
    l2_first_layer: float | None = None
    weight_decay: float = 0.0  # PyTorch-style decay (grad += wd * w) on kernels, added to the L2 above
    norm_lr_scale: float = 1.0  # learning-rate multiplier for biases and normalization parameters
    norm_weight_decay: float = 0.0  # PyTorch-style decay on biases and normalization parameters
    label_smoothing: float = 0.0
    # train.batch_size is the global batch (all processes together). To keep a learning rate tuned at another
    # batch size, name that size here and how lr follows the batch: "none", "linear" or "sqrt".
    base_batch_size: int | None = None
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    # optim.name = "muon": the filters' learning rate and momentum (Nesterov); optim.lr, momentum and the
    # decays above then apply to the other parameters, trained by SGD (see cifarkit.optim.muon)
    muon_lr: float = 0.24
    muon_momentum: float = 0.6
    # How a Muon filter is kept in check: "fixed_norm" (airbench94_muon: each filter bank rescaled to norm
    # sqrt(out_channels) before its step) or "decay" (the CIFAR-100 speedrun record: decoupled weight decay
    # muon_weight_decay x lr, the step scaled by sqrt(max(1, fan_out / fan_in)))
    muon_norm: Literal["fixed_norm", "decay"] = "fixed_norm"
    muon_weight_decay: float = 0.0
    muon_head: bool = False  # the linear head takes Muon steps too (the record) instead of SGD at optim.lr
    # Muon's momentum rises linearly from muon_momentum_start to muon_momentum over the first
    # muon_momentum_warmup of the run (the record: 0.85 -> 0.95 over 15%); 0: constant
    muon_momentum_warmup: float = 0.0
    muon_momentum_start: float = 0.85
    # learning-rate multiplier of the normalization layers' shifts (BatchNorm biases) relative to the other
    # biases and norms (the record's BN-shift rate x 8); 1: one rate for the group
    norm_shift_lr_scale: float = 1.0


@dataclass(frozen=True)
class ScheduleConfig:
    lr: str = "step"  # see cifarkit.schedules.LR_SCHEDULES
    milestones: list[int] = field(default_factory=list)  # "step": multiply by gamma at each of these steps
    gamma: float = 0.1
    # "step" with factors: after the k-th milestone the lr is lr_factors[k-1] x the base (instead of gamma**k)
    lr_factors: list[float] = field(default_factory=list)
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # warm-up length as a fraction of the run (used when warmup_steps is 0)
    warmup_start_fraction: float | None = None  # lr at step 0 as a fraction of the peak (None: 1/warmup)
    final_lr_fraction: float = 0.0  # "cosine" / "linear": the lr reached at the last step, as a fraction
    # "wsd" (warmup-stable-decay): after the warm-up, the peak until the last cooldown_fraction of the run, then
    # a linear decay to final_lr_fraction
    cooldown_fraction: float = 0.0
    # Dropout events in optimizer steps: {step = N, set = [rates per stack]} or {step = N, scale = f}.
    dropout_events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 165_000
    epochs: float | None = None  # if set (> 0), overrides `steps`: epochs x (training images // batch size)
    budget_seconds: float | None = None  # fit the run to a wall-clock budget (steps planned from speed); 0: off
    batch_size: int = 100
    eval_every: int = 500  # steps between validation passes, metrics lines and checkpoints
    eval_batch_size: int = 500
    seed: int = 0
    device: str = field(default="auto", metadata=KEPT)  # "auto" (CUDA, MPS, CPU) | "cuda" | "cuda:1" | "mps" | "cpu"
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16, else off
    out_dir: str = field(default="runs", metadata=WHERE)
    run_name: str | None = field(default=None, metadata=WHERE)  # default: <recipe>-<date>-<time>
    seeds: int = 1  # train this many seeds (seed, seed+1, ...) and report mean and standard deviation
    compile: bool = False  # torch.compile the model (optional; everything works without it)
    tta: bool = False  # also report flip test-time augmentation (separately from single-view accuracy)
    # Weight averaging: every `ema_every` steps, ema = decay * ema + (1 - decay) * weights (0: off).
    # With `lookahead`, the weights are then reset to the average (airbench's lookahead).
    ema_decay: float = 0.0
    ema_every: int = 1
    ema_ramp_power: float = 0.0  # decay at step s is ema_decay * (s / total) ** power: no averaging early on
    lookahead: bool = False
    # Never lose a run: a checkpoint at every evaluation, and also every N steps and/or T minutes.
    checkpoint_every: int | None = field(default=None, metadata=KEPT)
    checkpoint_minutes: float | None = field(default=10.0, metadata=KEPT)
    keep_checkpoints: int = field(default=3, metadata=KEPT)  # newest step checkpoints kept (best.pt is kept regardless)
    # skip steps whose loss is NaN/inf instead of stopping the run
    skip_nonfinite: bool = field(default=False, metadata=RECOVERY)
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


def settings_with(*roles: dict) -> tuple[str, ...]:
    """The dotted keys ("train.device") of the settings marked with one of `roles` (WHERE, KEPT, RECOVERY)."""
    wanted = {role["role"] for role in roles}
    return tuple(f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
                 if dataclasses.is_dataclass(section.default_factory)
                 for f in dataclasses.fields(section.default_factory) if f.metadata.get("role") in wanted)


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
    else:
        raise ConfigError(f"unknown recipe {name_or_path!r}; built-in recipes: {', '.join(list_recipes())} "
                          "(or pass a path to a .toml file)")
    if label in seen:
        raise ConfigError(f"recipe {label} extends itself (through {' -> '.join(seen)})")
    if len(seen) > 20:
        raise ConfigError(f"recipe {label}: more than 20 levels of `extends`")
    values = _parse_toml(text, f"recipe {label}")
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


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        values = _merge(values, nested)
    return values


def _at_least(low):
    return lambda v: None if v >= low else f"must be >= {low}"


def _above(low):
    return lambda v: None if v > low else f"must be > {low}"


def _between(low, high):  # low < v <= high: a rate that must be positive and not absurd
    return lambda v: None if low < v <= high else f"must be > {low:g} and at most {high:g}"


def _within(low, high):  # low <= v < high
    return lambda v: None if low <= v < high else f"must be in [{low}, {high})"


def _at_least_below(low, high):  # low <= v < high: a count or amount with a lower bound and a sane ceiling
    return lambda v: None if low <= v < high else f"must be >= {low} and < {high:g}"


def _optional(check):
    return lambda v: None if v is None else check(v)


# "section.key" -> a check returning what is wrong (or None). Types and enumerations are checked by
# `_build` from the dataclasses' annotations; these are the ranges that a type cannot say.
def _fraction(v) -> str | None:  # 0 <= v <= 1
    return None if 0 <= v <= 1 else "must be in [0, 1]"


RANGES: dict[str, Callable[[Any], str | None]] = {
    "data.val_per_class": _optional(_at_least(0)),
    "data.split_seed": _at_least(0),
    "data.train_subset": _optional(_at_least(1)),
    "preprocess.zca_epsilon": _between(0, 1e3),
    "preprocess.gcn_std_floor": _above(0),
    "augment.pad": _within(0, 17),
    "augment.resize_px": _within(0, 1024),
    "augment.resize_fraction": _fraction,
    "augment.mix_alpha": _between(0, 100),
    "augment.mix_probability": _fraction,
    "augment.mix_fraction": _fraction,
    # at most 1e30: room for divergence experiments (the tests drive runs to non-finite losses on purpose), while
    # the batch-scaled rate times a gradient stays a float32 number (1e300 overflowed inside the optimizer)
    "optim.lr": _between(0, 1e30),
    "optim.momentum": _within(0, 1),
    "optim.l2": _at_least_below(0, 100),
    "optim.l2_first_layer": _optional(_at_least_below(0, 100)),
    "optim.weight_decay": _at_least_below(0, 1),
    "optim.norm_lr_scale": _between(0, 1e4),
    "optim.norm_weight_decay": _at_least_below(0, 1),
    "optim.label_smoothing": _within(0, 1),
    "optim.base_batch_size": _optional(_at_least(1)),
    "optim.muon_lr": _between(0, 100),
    "optim.muon_momentum": _within(0, 1),
    "optim.muon_weight_decay": _at_least_below(0, 1),
    "optim.muon_momentum_warmup": _fraction,
    "optim.muon_momentum_start": _within(0, 1),
    "optim.norm_shift_lr_scale": _between(0, 1e4),
    "schedule.milestones": lambda v: None if all(isinstance(m, int) and not isinstance(m, bool) and m >= 0
                                                  for m in v) else "must be a list of step numbers >= 0",
    "schedule.gamma": _between(0, 1e3),
    "schedule.lr_factors": lambda v: None if all(isinstance(f, (int, float)) and not isinstance(f, bool) and
                                                 math.isfinite(f) and f > 0 for f in v) else "must be numbers > 0",
    "schedule.warmup_steps": _at_least_below(0, 10**9),
    "schedule.warmup_fraction": _within(0, 1),
    "schedule.warmup_start_fraction": _optional(lambda v: None if 0 <= v <= 1 else "must be in [0, 1]"),
    "schedule.final_lr_fraction": _at_least_below(0, 1e3),
    "schedule.cooldown_fraction": _fraction,
    "train.steps": _at_least_below(1, 10**9),
    "train.epochs": _optional(_at_least_below(0, 10**5)),  # 0: off (train.steps counts)
    "train.budget_seconds": _optional(_at_least_below(0, 10**8)),  # 0: off
    "train.batch_size": _at_least_below(1, 10**6),
    "train.eval_every": _at_least_below(1, 10**9),
    "train.eval_batch_size": _at_least_below(1, 10**6),
    "train.seed": _within(0, 2**32),
    "train.seeds": _within(1, 1001),
    "train.ema_decay": _within(0, 1),
    "train.ema_every": _at_least(1),
    "train.ema_ramp_power": _at_least_below(0, 100),
    "train.checkpoint_every": _optional(_at_least(1)),
    "train.checkpoint_minutes": _optional(_at_least(0)),
    "train.keep_checkpoints": _at_least(1),
}


def _check_registries(config: Config) -> None:
    """Names that must exist in a registry, and options that the chosen model must take."""
    for where, value, registry in (("data.dataset", config.data.dataset, DATASETS),
                                   ("optim.name", config.optim.name, OPTIMIZERS),
                                   ("schedule.lr", config.schedule.lr, LR_SCHEDULES)):
        if value not in registry:
            raise ConfigError(f"{where} must be one of {', '.join(registry)}; got {value!r}")
    check_model_options(config.model.name, config.model.kwargs)
    check_device_name(config.train.device)
    check_dropout_events(config.schedule.dropout_events)
    _check_dropout_layers(config)
    if config.schedule.lr_factors and len(config.schedule.lr_factors) != len(config.schedule.milestones):
        raise ConfigError(f"schedule.lr_factors needs one factor per milestone ({len(config.schedule.milestones)}), "
                          f"got {len(config.schedule.lr_factors)}")
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
    for key, check in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        problem = check(value)
        if problem:
            raise ConfigError(f"{key} {problem}; got {value!r}")
    _check_registries(config)
    return config


def config_from_dict(values: dict[str, Any]) -> Config:
    """A validated Config from plain data (a recipe after overrides, or a checkpoint's saved config)."""
    return validate(_build(Config, values, ""))


def load_config(recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None) -> Config:
    """The resolved config of `recipe` (a built-in name or a .toml path) after `--set` overrides."""
    return config_from_dict(apply_overrides(_read_recipe(recipe), overrides or []))
