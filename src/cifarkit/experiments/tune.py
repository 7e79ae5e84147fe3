"""`cifarkit tune`: Optuna's TPE sampler over a search space, a median pruner fed with a validation metric at
every evaluation pass, and the test split never looked at while tuning.

The metric (`--metric`) is the validation loss (default) or the validation error (1 - top-1); the objective
is that metric for the checkpoint that validation selects (what a run keeps). They can disagree: label
smoothing makes predictions less confident, which raises the loss of an equally accurate model, so tuning
by loss leans towards little smoothing. The best trial's values become a recipe that `extends` the tuned
one; `--test-best` evaluates that trial's selected checkpoint on the test split once, at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cifarkit.config import PLACE_SETTINGS, load_config, parse_override
from cifarkit.errors import CifarkitError
from cifarkit.experiments import optuna_private
from cifarkit.experiments.spec import Dimension, check_space, parse_space, recipe_text
from cifarkit.experiments.study import ExperimentError, default_storage, masked, open_storage, storage_errors
from cifarkit.experiments.sweep import PreparedCache, fingerprint
from cifarkit.files import atomic_write_text, json_text, read_json


@dataclass(frozen=True)
class Tuning:
    recipe: str
    base: tuple[str, ...]
    dimensions: tuple[Dimension, ...]
    trials: int
    name: str
    folder: Path
    storage_url: str
    fingerprint: str
    sampler_seed: int = 0
    metric: str = "loss"  # what the pruner sees and the objective is: validation "loss" or "error"

    def value(self, val: dict) -> float:
        return val["loss"] if self.metric == "loss" else 1.0 - val["top1"]

    def record(self) -> dict:
        return {"kind": "tune", "name": self.name, "recipe": self.recipe, "set": list(self.base),
                "metric": f"validation {self.metric}",
                "space": [d.describe() for d in self.dimensions], "trials": self.trials,
                "storage": masked(self.storage_url), "fingerprint": self.fingerprint}


METRICS = ("loss", "error")


def plan_tuning(recipe: str, sets: list[str], spaces: list[str], trials: int, out_dir: str = "runs",
                name: str | None = None, storage: str | None = None, sampler_seed: int = 0,
                metric: str = "loss") -> Tuning:
    if not spaces:
        raise ExperimentError("give at least one --space KEY=LOW:HIGH, KEY=log:LOW:HIGH or KEY=a|b|c")
    if trials < 1:
        raise ExperimentError(f"--trials must be >= 1, got {trials}")
    if metric not in METRICS:
        raise ExperimentError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    dimensions = [parse_space(text) for text in spaces]
    # A key both fixed (--set) and tuned (--space) is tuned: its --set value is dropped, so that trials and the
    # written best.toml name it once (both at once made best.toml invalid TOML, after every trial had run).
    tuned = {d.key for d in dimensions}
    sets = [text for text in sets if text.partition("=")[0].strip() not in tuned]
    base = [*sets, "train.seeds=1"]
    config = load_config(recipe, base)
    check_space(recipe, base, dimensions)
    if config.data.val_per_class == 0:
        raise ExperimentError("tuning needs a validation split (data.val_per_class = 0 has none): the test split "
                              "is never used to choose")
    extra = {"space": [dataclasses.astuple(d) for d in dimensions], "seed": sampler_seed}
    if metric != "loss":
        extra["metric"] = metric
    digest = fingerprint([config], extra)
    name = name or f"{config.recipe}-tune-{digest[:8]}"
    folder = Path(out_dir) / name
    return Tuning(recipe, tuple(base), tuple(dimensions), trials, name, folder, storage or default_storage(folder),
                  digest, sampler_seed, metric)


@functools.cache
def _tpe_sampler_class():
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        """Optuna's TPE sampler, its random state seeded from (--sampler-seed, trial number) for each trial.
        Workers sharing a study each get trial numbers of their own from the storage, so they draw different
        points (one seed for every worker drew identical ones), and one worker's sequence stays reproducible."""

        def __init__(self, seed: int):
            self.seed, self._by_trial = seed, {}

        def _tpe(self, trial):
            if trial.number not in self._by_trial:
                self._by_trial = {trial.number: optuna.samplers.TPESampler(seed=self.seed * 1_000_003 + trial.number)}
            return self._by_trial[trial.number]

        def infer_relative_search_space(self, study, trial):
            return self._tpe(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._tpe(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._tpe(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._tpe(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._tpe(trial).after_trial(study, trial, state, values)

    return TrialSeededTPE


def trial_seeded_tpe(seed: int):
    """A TrialSeededTPE sampler (the class is built on first use: Optuna is imported only by experiments)."""
    return _tpe_sampler_class()(seed)


def open_tuning_study(tuning: Tuning):
    import optuna

    # no heartbeats: tuning's trials are asked and told in one process (Optuna warns that heartbeats expect
    # Study.optimize); a sweep's queue is what needs them
    storage = open_storage(tuning.storage_url, heartbeat_seconds=None, grace_seconds=None)
    sampler = trial_seeded_tpe(tuning.sampler_seed)
    # a trial is pruned when its validation metric is worse than the median of earlier trials at the same step
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    study = optuna.create_study(study_name=tuning.name, storage=storage, direction="minimize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    ours = study.user_attrs.get("cifarkit")
    if ours is None:
        study.set_user_attr("cifarkit", {"kind": "tune", "recipe": tuning.recipe, "fingerprint": tuning.fingerprint})
    elif ours.get("kind") != "tune" or ours.get("fingerprint") != tuning.fingerprint:
        raise ExperimentError(f"study {tuning.name!r} in {masked(tuning.storage_url)} was created by a different "
                              f"experiment (recipe {ours.get('recipe')!r}, another space or settings); choose another "
                              "--name")
    tuning.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(tuning.folder / "tune.json", json_text(tuning.record()) + "\n")
    return study


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _objective(tuning: Tuning, log: Callable[[str], None]) -> Callable:
    """One trial: its point's config trained (pruned by the study at each validation pass), its value returned."""
    import optuna

    from cifarkit.train.loop import train
    from cifarkit.train.stopping import TrainingInterrupted

    cache = PreparedCache()
    quiet = lambda _: None  # noqa: E731  (trials are many: one line each, not the whole training log)

    def objective(trial) -> float:
        values = [f"{d.key}={d.suggest(trial)}" for d in tuning.dimensions]
        config = load_config(tuning.recipe, [*tuning.base, *values,
                                             f"train.out_dir={json.dumps(str(tuning.folder / 'trials'))}",
                                             f"train.run_name=trial-{trial.number:04d}"])
        trial.set_user_attr("run_dir", f"trials/trial-{trial.number:04d}")

        def report(step: int, val: dict) -> None:
            trial.report(tuning.value(val), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val {tuning.metric} {tuning.value(val):.4f} at step {step} is worse than "
                                         "the median")

        try:
            results = train(config, quiet, cache.get(config, quiet), on_validation=report, evaluate_test=False)
        except optuna.TrialPruned:
            log(f"trial {trial.number}: pruned | {', '.join(values)}")
            raise
        except TrainingInterrupted:
            raise KeyboardInterrupt from None  # stop the study; the trial is recorded as failed
        trial.set_user_attr("val_top1", results["val"]["top1"])
        log(f"trial {trial.number}: val loss {results['val']['loss']:.4f} top1 {results['val']['top1']:.4f} | "
            f"{', '.join(values)}")
        return tuning.value(results["val"])

    return objective


def run_tuning(tuning: Tuning, log: Callable[[str], None] = print) -> dict:
    """Run trials until the study holds `tuning.trials` finished (complete or pruned) ones; write best.toml."""
    import optuna

    study = open_tuning_study(tuning)
    objective = _objective(tuning, log)
    left = tuning.trials - _finished(study)
    if left > 0:
        log(f"tune {tuning.name}: {left} trial(s) to run ({tuning.trials - left} done) over "
            f"{'; '.join(d.describe() for d in tuning.dimensions)} | study in {masked(tuning.storage_url)}")
    with storage_errors(tuning.storage_url):
        while _finished(study) < tuning.trials:
            trial = study.ask()
            if not _within_quota(study, trial, tuning.trials):  # other workers hold the last places
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            except CifarkitError as e:  # a bad point (a non-finite loss...): recorded as failed, the study goes on
                optuna_private.set_user_attr(study, trial, "error", str(e))
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                log(f"trial {trial.number} failed: {e}")
                continue
            except BaseException:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            study.tell(trial, value)
    return write_best(tuning, study)


def _within_quota(study, trial, total: int) -> bool:
    """Whether `trial` is among the first `total` trials that are running or finished (complete or pruned):
    workers sharing a study stop at --trials together instead of each running its own last ones."""
    from optuna.trial import TrialState

    taken = sorted(t.number for t in study.get_trials(deepcopy=False, states=(
        TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)))
    return trial.number in taken[:total]


def best_overrides(tuning: Tuning, trial) -> list[str]:
    by_key = {d.key: d for d in tuning.dimensions}
    out = []
    for key, value in trial.params.items():
        kind = by_key[key].kind if key in by_key else "float"
        out.append(f"{key}={value if kind == 'categorical' else repr(value)}")
    return out


def write_best(tuning: Tuning, study) -> dict:
    """The best complete trial as a recipe file extending the tuned recipe (with the --set values used)."""
    try:
        best = study.best_trial
    except ValueError:
        raise ExperimentError(f"study {tuning.name!r} has no completed trial yet (all failed or were pruned); "
                              "see the trial messages above") from None
    recipe_ref = str(Path(tuning.recipe).resolve()) if tuning.recipe.endswith(".toml") else tuning.recipe
    # the values tuned and the recipe's other --set values; not where or how long each trial ran
    left_out = {*PLACE_SETTINGS, "train.budget_seconds"}
    kept = [s for s in tuning.base if s != "train.seeds=1" and ".".join(parse_override(s)[0]) not in left_out]
    chosen = best_overrides(tuning, best)
    text = recipe_text(recipe_ref, [*kept, *chosen],
                       f"Tuned by `cifarkit tune` (study {tuning.name}, trial {best.number} of {len(study.trials)}):\n"
                       f"validation {tuning.metric} {best.value:.4f}, validation top-1 "
                       f"{best.user_attrs.get('val_top1', 0):.4f}.")
    path = tuning.folder / "best.toml"
    draft = tuning.folder / ".best.draft.toml"
    atomic_write_text(draft, text)
    try:
        load_config(str(draft))  # the file must resolve as it is written, or it is not written at all
    except CifarkitError as e:
        draft.unlink(missing_ok=True)
        raise ExperimentError(f"the best trial's recipe does not load ({e}); best.toml was not written") from None
    os.replace(draft, path)
    return {"trial": best.number, "value": best.value, "val_top1": best.user_attrs.get("val_top1"),
            "values": chosen, "recipe_file": path, "run_dir": tuning.folder / best.user_attrs["run_dir"]}


def test_best(best: dict, data_dir: str | None = None, device: str = "cpu") -> dict:
    """The best trial's selected checkpoint on the test split: once, after tuning."""
    from cifarkit.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(str(best["run_dir"]), "test", False, None, data_dir, device)
    atomic_write_text(Path(best["recipe_file"]).with_name("best-test.json"),
                      json_text({"trial": best["trial"], "test_top1": report["top1"], "test_loss": report["loss"]})
                      + "\n")
    return report


def tuning_plots(folder: Path, storage: str | None = None) -> dict[str, Path]:
    """Optuna's optimisation history and parameter importances (matplotlib) for a tuning folder."""
    import optuna

    from cifarkit.plots import pyplot, save_figure

    record = read_json(Path(folder) / "tune.json", 1 << 20, ExperimentError, "tuning record")
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise ExperimentError(f"{folder}/tune.json is not a cifarkit tuning record (no study name)")
    # The study is opened where the user says (--storage) or in the folder itself: never at a URL read from a
    # file in the folder, which anyone who can write there could point anywhere.
    url = storage or default_storage(Path(folder))
    with storage_errors(url):
        try:
            study = optuna.load_study(study_name=record["name"], storage=open_storage(url, create=False))
        except KeyError:
            raise ExperimentError(f"no study named {record['name']!r} in {masked(url)}; pass the study's --storage "
                                  "(its URL is not read from the folder)") from None
    pyplot()
    out = Path(folder) / "report"
    out.mkdir(exist_ok=True)
    files = {}
    for name, draw in (("history", optuna.visualization.matplotlib.plot_optimization_history),
                       ("importances", optuna.visualization.matplotlib.plot_param_importances)):
        try:
            ax = draw(study)
        except (ValueError, RuntimeError):  # too few finished trials for this plot
            continue
        files[name] = save_figure(ax.figure, out / f"{name}.png")
    return files
