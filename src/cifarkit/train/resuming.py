"""Continuing a run where it stopped: its newest intact checkpoint, and only the settings that say how it
goes on (cifarkit.config.RESUMABLE_SETTINGS) may change."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from cifarkit.checkpoints import FOR_RESUME, check_payload
from cifarkit.config import RESUMABLE_SETTINGS, apply_overrides, config_from_dict, parse_override
from cifarkit.errors import CheckpointError, ConfigError
from cifarkit.files import read_json
from cifarkit.train.checkpoint import CheckpointStore
from cifarkit.train.loop import Trainer
from cifarkit.train.setup import PreparedData, print_line


def check_resume_overrides(overrides: list[str]) -> None:
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUMABLE_SETTINGS:
            raise ConfigError(f"--set {key} cannot change when resuming (the run would no longer be the one that was "
                              f"started); settings that may change: {', '.join(RESUMABLE_SETTINGS)}. To train with "
                              "other values, start a new run")


# what makes a checkpoint another run's: its data and its network
IDENTITY = ("data.dataset", "model.name", "model.kwargs")


def _setting(config: dict, dotted: str):
    section, key = dotted.split(".")
    return (config.get(section) or {}).get(key) if isinstance(config, dict) else None


def _computed(config: dict) -> dict:
    """The settings that say what a run computes (not those that may change on resume), as plain JSON values."""
    flat = {f"{section}.{key}": value for section, table in config.items() if isinstance(table, dict)
            for key, value in table.items()}
    return json.loads(json.dumps({k: v for k, v in flat.items() if k not in RESUMABLE_SETTINGS}, default=str))


def _check_belongs(run_dir: Path, state: dict, log: Callable[[str], None]) -> None:
    """The checkpoint is this run's (a CIFAR-10 checkpoint copied into a CIFAR-100 run is refused), and an edited
    config.json is kept aside with a warning rather than silently overwritten: a resumed run keeps the settings
    its checkpoint was trained with."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    try:
        written = read_json(path, 1 << 20, CheckpointError, "the run's config.json")
    except CheckpointError as e:
        log(f"warning: {e}; the checkpoint's own settings are used")
        return
    if not isinstance(written, dict):
        return
    for key in IDENTITY:
        if _setting(written, key) != _setting(state["config"], key):
            raise CheckpointError(
                f"the newest checkpoint in {run_dir} is not this run's: its {key} is "
                f"{json.dumps(_setting(state['config'], key))}, the run's config.json says "
                f"{json.dumps(_setting(written, key))}. Remove the foreign checkpoint, or resume the run it came from")
    if _computed(written) != _computed(state["config"]):
        kept = path.with_name("config.edited.json")
        os.replace(path, kept)
        log(f"warning: {path} was edited since the checkpoint was written; a resumed run keeps its checkpoint's "
            f"settings (change the ones that may change with --set: {', '.join(RESUMABLE_SETTINGS)}). The edited "
            f"file is kept as {kept.name}")


def resume(run_dir: str | Path, overrides: list[str] | None = None, log: Callable[[str], None] = print_line,
           prepared: PreparedData | None = None, on_validation: Callable[[int, dict], None] | None = None,
           evaluate_test: bool = True) -> dict:
    """Continue the run in `run_dir` from its newest intact checkpoint, exactly where it stopped."""
    run_dir = Path(run_dir)
    check_resume_overrides(overrides or [])
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory")
    state = check_payload(CheckpointStore(run_dir).load_latest(log), run_dir, FOR_RESUME)
    _check_belongs(run_dir, state, log)
    if state["step"] >= state["total_steps"]:  # the test figures are computed again from the verified checkpoint
        log(f"{run_dir} finished at step {state['step']} of {state['total_steps']}: nothing to train; testing it "
            f"again. To train longer, start a new run from it: --set train.init_from='\"{run_dir}\"'")
    config = config_from_dict(apply_overrides(state["config"], overrides or []))
    log(f"resuming {run_dir} from step {state['step']}")
    return Trainer(config, log, prepared, run_dir=run_dir, resume_from=state, on_validation=on_validation).fit(
        evaluate_test)
