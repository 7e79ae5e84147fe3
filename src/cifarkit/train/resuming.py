"""Continuing a run where it stopped: its newest intact checkpoint, and only the settings that say how it
goes on (cifarkit.config.RESUMABLE_SETTINGS) may change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cifarkit.checkpoints import FOR_RESUME, check_payload
from cifarkit.config import RESUMABLE_SETTINGS, apply_overrides, config_from_dict, parse_override
from cifarkit.errors import CheckpointError, ConfigError
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


def resume(run_dir: str | Path, overrides: list[str] | None = None, log: Callable[[str], None] = print_line,
           prepared: PreparedData | None = None, on_validation: Callable[[int, dict], None] | None = None,
           evaluate_test: bool = True) -> dict:
    """Continue the run in `run_dir` from its newest intact checkpoint, exactly where it stopped."""
    run_dir = Path(run_dir)
    check_resume_overrides(overrides or [])
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory")
    state = check_payload(CheckpointStore(run_dir).load_latest(log), run_dir, FOR_RESUME)
    config = config_from_dict(apply_overrides(state["config"], overrides or []))
    log(f"resuming {run_dir} from step {state['step']}")
    return Trainer(config, log, prepared, run_dir=run_dir, resume_from=state, on_validation=on_validation).fit(
        evaluate_test)
