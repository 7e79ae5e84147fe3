"""One config object for a run: frozen dataclasses, filled from a recipe file and `--set key=value` overrides.

A recipe is a TOML file (see `src/cifarkit/recipes/`). It may name another recipe in `extends` and change
only what differs. Unknown keys are errors, so a typo never silently falls back to a default. The resolved
config is saved in every run directory and inside every checkpoint as plain data.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

from cifarkit.data.loader import AugmentConfig
from cifarkit.data.preprocess import PreprocessConfig
from cifarkit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_RECIPE = "elu-seed"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar100"  # "cifar100" | "cifar10"
    data_dir: str | None = None  # extracted folder or .tar.gz; else $CIFARKIT_DATA_DIR, the cache, a download
    download: bool = True
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
    name: str = "sgd"  # see cifarkit.train.optim.OPTIMIZERS
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
    lr_scaling: str = "none"


@dataclass(frozen=True)
class ScheduleConfig:
    lr: str = "step"  # see cifarkit.train.schedules.LR_SCHEDULES
    milestones: list[int] = field(default_factory=list)  # "step": multiply by gamma at each of these steps
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # warm-up length as a fraction of the run (used when warmup_steps is 0)
    final_lr_fraction: float = 0.0  # "cosine" / "linear": the lr reached at the last step, as a fraction
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
    device: str = "auto"  # "auto" (CUDA, then MPS, then CPU) | "cuda" | "cuda:1" | "mps" | "cpu"
    amp: str = "auto"  # "auto" (bf16 on CUDA, off elsewhere) | "bf16" | "off"
    out_dir: str = "runs"
    run_name: str | None = None  # default: <recipe>-<date>-<time>
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
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = 10.0
    keep_checkpoints: int = 3  # newest step checkpoints kept (best.pt is kept regardless)
    skip_nonfinite: bool = False  # skip steps whose loss is NaN/inf instead of stopping the run
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-reproducible resume on CPU)
    sync_batchnorm: bool = False  # with several processes: BatchNorm statistics over the global batch


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


def _build(cls, values: dict[str, Any], where: str):
    """Instantiate dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} should be a table of settings, got {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown setting {where}{unknown[0]!r}; valid keys here: {', '.join(sorted(names))}")
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


def _check_type(value: Any, hint: Any, where: str) -> Any:
    text = str(hint)
    if isinstance(value, Override):
        value = value.value if isinstance(value.value, str) or not text.startswith("str") else value.raw
    value = _plain(value)
    if value is None:
        if "None" not in text:
            raise ConfigError(f"{where} cannot be empty")
        return value
    if hint is bool or text.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} should be true or false, got {value!r}")
    elif hint is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} should be an integer, got {value!r}")
    elif hint is float or text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} should be a number, got {value!r}")
        value = float(value)
    elif hint is str or text.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where} should be a string, got {value!r}")
    elif text.startswith("list") and not isinstance(value, list):
        raise ConfigError(f"{where} should be a list, got {value!r}")
    elif text.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(f"{where} should be a table, got {value!r}")
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


def _read_recipe(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") and path.is_file():
        text, label = path.read_text(), str(path)
    elif name_or_path in list_recipes():
        text, label = resources.files("cifarkit.recipes").joinpath(f"{name_or_path}.toml").read_text(), name_or_path
    else:
        raise ConfigError(f"unknown recipe {name_or_path!r}; built-in recipes: {', '.join(list_recipes())} "
                          "(or pass a path to a .toml file)")
    if label in seen:
        raise ConfigError(f"recipe {label} extends itself (through {' -> '.join(seen)})")
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"recipe {label} is not valid TOML: {e}") from None
    parent = values.pop("extends", None)
    if parent:
        values = _merge(_read_recipe(parent, (*seen, label)), values)
    values["recipe"] = Path(label).stem if label.endswith(".toml") else label
    return values


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
    return key.strip().split("."), Override(value, raw.strip())


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        values = _merge(values, nested)
    return values


def config_from_dict(values: dict[str, Any]) -> Config:
    return _build(Config, values, "")


def load_config(recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None) -> Config:
    """The resolved config of `recipe` (a built-in name or a .toml path) after `--set` overrides."""
    return config_from_dict(apply_overrides(_read_recipe(recipe), overrides or []))
