"""A run's clock: the wall-clock budget (how many steps fit) and the training time (validation passes excluded,
summed across resumes), in one object, so the loop only says when a step or a validation pass happens."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from cifarkit.device import device_name_of

MARGIN = 0.98  # of a budget that steps are planned into: the rest absorbs the last steps' jitter


def steps_that_fit(budget: float, used: float, per_step: float, per_eval: float, eval_every: int) -> int:
    """How many more steps fit in what is left of `budget` (seconds; `used` spent already), a validation pass every
    `eval_every` steps included: the one formula of a run's planner and of its projection."""
    return int((MARGIN * budget - used) / (per_step + per_eval / eval_every))


class BudgetPlanner:
    """Fits a run to a wall-clock budget (training plus validation passes). The number of steps is planned
    after a few calibration steps and re-planned after every validation pass from the measured time per step
    and per pass, so the learning-rate schedule still ends at its end instead of being cut short. A resumed
    run counts the budget its earlier processes spent (`spent`) and calibrates again from where it resumed
    (`first_step`): this machine, now, may not run at the speed the earlier one did."""

    CALIBRATION_STEPS = 10

    def __init__(self, budget_seconds: float | None, eval_every: int, spent: float = 0.0, first_step: int = 0):
        self.budget, self.eval_every = budget_seconds, eval_every
        self.spent, self.first_step = spent, first_step
        self.started = time.perf_counter()
        self.eval_seconds, self.evals = 0.0, 0

    def record_eval(self, seconds: float) -> None:
        self.eval_seconds += seconds
        self.evals += 1

    def used(self) -> float:
        """Budget seconds used so far, by this process and the ones before it."""
        return self.spent + time.perf_counter() - self.started

    def plan(self, done: int, total: int, just_evaluated: bool) -> int:
        if self.budget is None:
            return total
        elapsed = time.perf_counter() - self.started
        if self.spent + elapsed > self.budget:
            return done
        measured = done - self.first_step
        if measured <= 0 or (measured != self.CALIBRATION_STEPS and not just_evaluated):
            return total
        per_step = (elapsed - self.eval_seconds) / measured
        per_eval = self.eval_seconds / self.evals if self.evals else 0.0
        left = steps_that_fit(self.budget, self.spent + elapsed, per_step, per_eval, self.eval_every)
        return max(done + 1, done + left)


class RunClock:
    """Training time and budget planning: `start()` when training starts; `train_seconds` then grows while
    training runs and stands still inside `validation_pass()`; `bank()` brings it up to date (before every
    checkpoint)."""

    def __init__(self, train_seconds: float, budget_seconds: float | None, eval_every: int,
                 budget_spent: float = 0.0, first_step: int = 0):
        self.train_seconds = train_seconds  # across resumes: the checkpoint's figure on resume
        self.planner = BudgetPlanner(budget_seconds, eval_every, budget_spent, first_step)
        self.start()
        self._in_validation = False

    def start(self) -> None:
        """Wall-clock time (and the budget) count from now: set-up before training is not training time."""
        self.started = self._banked_at = self.planner.started = time.perf_counter()

    @property
    def budget(self) -> float | None:
        return self.planner.budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def bank(self) -> None:
        """Add the training time since the last call (none inside a validation pass)."""
        if self._in_validation:
            return
        now = time.perf_counter()
        self.train_seconds += now - self._banked_at
        self._banked_at = now

    @contextmanager
    def validation_pass(self):
        """Time spent inside is not training time; the planner learns what a validation pass costs."""
        self.bank()
        self._in_validation, began = True, time.perf_counter()
        try:
            yield
        finally:
            self._in_validation, self._banked_at = False, time.perf_counter()
            self.planner.record_eval(self._banked_at - began)

    def plan(self, done: int, total: int, just_evaluated: bool) -> int:
        return self.planner.plan(done, total, just_evaluated)


def duration_text(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


PROJECTION_STEPS = 5  # steps timed before the projected duration of the run is logged
# what a CPU user is pointed to when a recipe would take hours, by dataset
CPU_RECIPES = {"cifar100": ("fast100-cpu", "CIFAR-100 in 10 minutes"),
               "cifar10": ("fast10-cpu", "CIFAR-10 in 10 minutes")}
GPU_HOURS = 24  # beyond this a run is no CPU job, however well it resumes


def projection_line(steps_left: int, seconds_per_step: float, device: torch.device, dataset: str = "cifar10",
                    run_dir: str | None = None, checkpoint_minutes: float | None = None) -> str:
    """How long the rest of the run will take here; past two hours off a GPU, that it resumes (the long CPU
    recipes are built to run for hours) and what trains in minutes instead; past a day, that it needs a GPU."""
    left = steps_left * seconds_per_step
    line = (f"projected: {steps_left:,} more steps x {seconds_per_step:.2f}s = {duration_text(left)} on "
            f"{device_name_of(device)}")
    if left <= 2 * 3600 or device.type == "cuda":
        return line
    recipe, what = CPU_RECIPES.get(dataset, CPU_RECIPES["cifar10"])
    cadence = f" every {checkpoint_minutes:g} minutes and" if checkpoint_minutes else ""
    line += (". That is more than two hours" + (": this recipe is meant for a GPU" if left > GPU_HOURS * 3600 else "")
             + f". It keeps a checkpoint{cadence} at every validation, and `cifarkit train --resume "
             f"{run_dir or 'RUN_DIR'}` continues it after any interruption. To train in minutes instead: "
             f"`cifarkit train --recipe {recipe}` ({what}), or set train.budget_seconds to fit this one to a "
             "wall-clock budget")
    return line
