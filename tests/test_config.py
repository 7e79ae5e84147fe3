"""The run config as the parts compose it: flat shipped recipes, renamed settings still read, ranges beside the
fields."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from importlib import resources

import pytest
import tomllib

from cifarkit.config import PLACE_SETTINGS, Config, config_from_dict, list_recipes, load_config
from cifarkit.errors import ConfigError


def _extends(name: str) -> str | None:
    return tomllib.loads(resources.files("cifarkit.recipes").joinpath(f"{name}.toml").read_text()).get("extends")


@pytest.mark.parametrize("name", list_recipes())
def test_shipped_recipes_are_at_most_one_level_deep(name):
    """A recipe names its whole setting in its own file, or in one base recipe that extends nothing."""
    parent = _extends(name)
    assert parent is None or _extends(parent) is None, f"{name} -> {parent} -> {_extends(parent)}"


@pytest.mark.parametrize("name", list_recipes())
def test_shipped_recipes_spell_current_names(name, capsys):
    load_config(name)
    assert capsys.readouterr().err == ""  # no renamed setting in a shipped recipe


def test_the_old_name_of_a_setting_still_works_and_says_so(tmp_path, capsys):
    """schedule.lr is now schedule.name: a recipe or a --set that says the old one gets the same config and a line
    on stderr; a stored config (a run's, a checkpoint's, a shipped model's) is read silently."""
    recipe = tmp_path / "old.toml"
    recipe.write_text('extends = "fast10"\n[schedule]\nlr = "cosine"\n')
    assert load_config(str(recipe)).schedule.name == "cosine"
    assert "schedule.lr, which is now schedule.name" in capsys.readouterr().err
    assert load_config("fast10", ["schedule.lr=wsd"]).schedule.name == "wsd"
    assert "--set says schedule.lr, which is now schedule.name" in capsys.readouterr().err

    stored = load_config("fast10").to_dict()
    stored["schedule"]["lr"] = stored["schedule"].pop("name")
    assert config_from_dict(stored) == load_config("fast10")
    assert capsys.readouterr().err == ""

    both = tmp_path / "both.toml"
    both.write_text('extends = "fast10"\n[schedule]\nlr = "cosine"\nname = "wsd"\n')
    with pytest.raises(ConfigError, match="sets both schedule.lr and schedule.name"):
        load_config(str(both))


def test_an_experiment_keeps_its_digest_across_the_rename():
    """Sweeps and studies are named by a digest of their configs: it is computed with the old spelling, and
    without settings added since (optim.bias_lr, train.select, train.init_from) where they are at the value that
    computes what their absence did, so an experiment begun earlier continues under the same name."""
    from cifarkit.experiments.sweep import fingerprint

    config = load_config("fast10")
    values = config.to_dict()
    for setting in PLACE_SETTINGS:
        section, key = setting.split(".")
        values[section].pop(key)
    values["schedule"]["lr"] = values["schedule"].pop("name")
    assert values["optim"].pop("bias_lr") is None  # a config of then had no such key
    assert values["train"].pop("select") == "val_loss"  # nor this one
    assert values["train"].pop("init_from") is None  # nor this one
    text = json.dumps([[values], {"seeds": [0]}], sort_keys=True, default=str)
    assert fingerprint([config], {"seeds": [0]}) == hashlib.sha256(text.encode()).hexdigest()
    assert fingerprint([load_config("fast10", ["optim.bias_lr=0.5", "optim.norm_lr_scale=1"])], {"seeds": [0]}) != \
        fingerprint([config], {"seeds": [0]})


@pytest.mark.parametrize(("setting", "message"), [
    ("optim.lr=0", "optim.lr must be > 0 and at most 1e+30; got 0.0"),
    ("schedule.cooldown_fraction=2", "schedule.cooldown_fraction must be in [0, 1]; got 2.0"),
    ("augment.mix_alpha=-1", "augment.mix_alpha must be > 0 and at most 100; got -1.0"),
    ("data.dataset=mnist", "data.dataset must be one of cifar100, cifar10; got 'mnist'"),
    ("optim.name=adam", "optim.name must be one of sgd, muon; got 'adam'"),
    ("train.seeds=0", "train.seeds must be in [1, 1001); got 0"),
])
def test_each_range_is_checked_where_the_field_is_written(setting, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("fast10", [setting])


def test_every_section_is_checked():
    """validate walks every section's fields: none is left out of the composed config."""
    sections = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory)]
    assert sections == ["data", "preprocess", "augment", "model", "optim", "schedule", "train"]
