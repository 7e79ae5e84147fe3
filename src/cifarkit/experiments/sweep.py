"""`cifarkit sweep`: a grid of settings x paired seeds, as an Optuna study whose trials are the grid's cells.

Every (variant, seed) cell is queued once, when the study is created, as a waiting Optuna trial; workers
take waiting trials atomically (see `study.py`), so several processes or machines on one study never run a
cell twice. Cell i of every variant uses seed `train.seed + i`: variants whose weights have the same shapes
start from the same initial weights and see the same batches (the ELU paper's paired protocol). Each cell is
a normal run folder, SWEEP_DIR/trials/VARIANT/seedN; a cell that was stopped continues from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cifarkit.config import ADDED, PLACE_SETTINGS, RENAMED, Config
from cifarkit.experiments.spec import Axis, Variant, grid, parse_vary, resolve_variants
from cifarkit.experiments.study import ExperimentError, default_storage, masked, open_storage, requeue, run_queue
from cifarkit.files import atomic_write_text, json_text, read_json


def fingerprint(configs: list[Config], extra: object) -> str:
    """A hash of what the experiment computes: every config (without PLACE_SETTINGS) and `extra`."""
    def computed(config: Config) -> dict:
        values = config.to_dict()
        for setting in PLACE_SETTINGS:  # workers may differ in where and how their runs are kept
            section, key = setting.split(".")
            values[section].pop(key, None)
        for setting, before in ADDED.items():  # not there before: an experiment begun earlier keeps its digest
            section, key = setting.split(".")
            if values[section].get(key, before) == before:
                values[section].pop(key, None)
        for old, new in RENAMED.items():  # the old spelling: an experiment begun before a rename keeps its digest
            (section, old_key), new_key = old.split("."), new.split(".", 1)[1]
            values[section][old_key] = values[section].pop(new_key)
        return values

    text = json.dumps([[computed(c) for c in configs], extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Sweep:
    recipe: str
    base: tuple[str, ...]  # --set overrides (with --budget-seconds, --device)
    axes: tuple[Axis, ...]
    variants: tuple[Variant, ...]
    configs: tuple[Config, ...]  # one per variant, validated
    seeds: tuple[int, ...]
    name: str
    folder: Path
    storage_url: str
    fingerprint: str

    def cells(self) -> list[tuple[Variant, int]]:
        """Seed-major: every variant's first seed runs before any second seed, so a partial sweep is paired."""
        return [(v, s) for s in self.seeds for v in self.variants]

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.folder / "trials" / variant.name / f"seed{seed}"

    def record(self) -> dict:
        return {"kind": "sweep", "name": self.name, "recipe": self.recipe, "set": list(self.base),
                "vary": [{"key": a.key, "values": list(a.raw)} for a in self.axes], "seeds": list(self.seeds),
                "variants": [{"name": v.name, "overrides": list(v.overrides)} for v in self.variants],
                "storage": masked(self.storage_url), "fingerprint": self.fingerprint}


# A typo (--seeds 100000000, one axis too many) must not plan for an hour or fill the memory before saying so.
MAX_SEEDS = 1000
MAX_CELLS = 10_000  # --max-cells raises it


def plan_sweep(recipe: str, sets: list[str], vary: list[str], seeds: int, out_dir: str = "runs",
               name: str | None = None, storage: str | None = None, max_cells: int = MAX_CELLS) -> Sweep:
    """Parse and check everything (every variant's config resolved and validated) before anything runs."""
    if not vary:
        raise ExperimentError("give at least one --vary KEY=v1,v2 (the settings to compare)")
    if not 1 <= seeds <= MAX_SEEDS:
        raise ExperimentError(f"--seeds must be between 1 and {MAX_SEEDS}, got {seeds}")
    axes = [parse_vary(text) for text in vary]
    cells = math.prod(len(a.raw) for a in axes) * seeds  # counted before any variant is built
    if cells > max_cells:
        raise ExperimentError(f"this sweep has {cells:,} cells ({' x '.join(str(len(a.raw)) for a in axes)} variants x "
                              f"{seeds} seeds), more than --max-cells {max_cells:,}; check the --vary lists and "
                              "--seeds, or raise --max-cells if you mean it")
    variants = grid(axes)
    base = [*sets, "train.seeds=1"]
    configs = resolve_variants(recipe, base, variants)
    first = configs[0].train.seed
    seed_list = tuple(range(first, first + seeds))
    digest = fingerprint(configs, {"seeds": seed_list, "variants": [v.overrides for v in variants]})
    name = name or f"{configs[0].recipe}-sweep-{digest[:8]}"
    folder = Path(out_dir) / name
    return Sweep(recipe, tuple(base), tuple(axes), tuple(variants), tuple(configs), seed_list, name, folder,
                 storage or default_storage(folder), digest)


def _check_folder(sweep: Sweep) -> None:
    record = sweep.folder / "sweep.json"
    if record.is_file():
        try:
            theirs = read_json(record, 1 << 20, ExperimentError, "sweep record")
        except ExperimentError:
            theirs = {}
        theirs = theirs if isinstance(theirs, dict) else {}
        if theirs.get("fingerprint") != sweep.fingerprint:
            raise ExperimentError(f"{sweep.folder} holds another sweep (recipe {theirs.get('recipe')!r}, other "
                                  "settings or seeds); choose another --name or --out-dir")
    elif sweep.folder.exists() and any(sweep.folder.iterdir()) and not (sweep.folder / "study.db").exists():
        raise ExperimentError(f"{sweep.folder} exists and is not a sweep folder; choose another --name or --out-dir")


def open_study(sweep: Sweep, log: Callable[[str], None] = print, wait_seconds: float = 60.0):
    """Create the sweep's study and queue its cells, or load it and check it is the same sweep."""
    import optuna

    _check_folder(sweep)
    storage = open_storage(sweep.storage_url)
    sampler = optuna.samplers.RandomSampler()  # never asked: every trial comes from the queue
    try:
        study = optuna.create_study(study_name=sweep.name, storage=storage, direction="maximize", sampler=sampler)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=sampler)
        created = False
    if created:
        study.set_user_attr("cifarkit", {"kind": "sweep", "recipe": sweep.recipe, "fingerprint": sweep.fingerprint,
                                         "variants": [v.label for v in sweep.variants],
                                         "seeds": list(sweep.seeds)})
        for variant, seed in sweep.cells():
            study.enqueue_trial({"variant": variant.index, "seed": seed},
                                user_attrs={"variant": variant.name, "seed": seed,
                                            "run_dir": str(sweep.run_dir(variant, seed).relative_to(sweep.folder))})
        study.set_user_attr("queued", len(sweep.cells()))
        log(f"sweep {sweep.name}: {len(sweep.variants)} variants x {len(sweep.seeds)} seeds = {len(sweep.cells())} "
            f"trials queued in {masked(sweep.storage_url)}")
    else:
        deadline = time.monotonic() + wait_seconds
        while "queued" not in study.user_attrs and time.monotonic() < deadline:
            time.sleep(0.5)  # another worker is creating it right now
        ours = study.user_attrs.get("cifarkit", {})
        if ours.get("kind") != "sweep" or ours.get("fingerprint") != sweep.fingerprint:
            raise ExperimentError(f"study {sweep.name!r} in {masked(sweep.storage_url)} was created by a different "
                                  f"experiment (recipe {ours.get('recipe')!r}, other settings or seeds); choose "
                                  "another --name")
        if "queued" not in study.user_attrs:
            raise ExperimentError(f"study {sweep.name!r} exists but its trials were never queued (its creator "
                                  "stopped at once); delete the study or choose another --name")
    sweep.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.folder / "sweep.json", json_text(sweep.record()) + "\n")
    return study


class PreparedCache:
    """The data of the last trial, reused while the next one needs the same data and preprocessing (loading and
    fitting ZCA again for every cell would cost more than a short trial)."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, config: Config, log):
        from cifarkit.device import resolve_device
        from cifarkit.train.setup import prepare_data

        device = resolve_device(config.train.device)
        key = json.dumps([dataclasses.asdict(config.data), dataclasses.asdict(config.preprocess), str(device)],
                         sort_keys=True)
        if key != self.key:
            self.key, self.value = None, None  # free the old tensors first
            self.value, self.key = prepare_data(config, device, log), key
        return self.value


def run_cell(sweep: Sweep, variant: Variant, seed: int, cache: PreparedCache, log) -> dict:
    """Train the cell, continue it from its checkpoint, or read its results if it finished already."""
    from cifarkit.train.checkpoint import CheckpointStore
    from cifarkit.train.loop import train
    from cifarkit.train.resuming import resume

    run_dir = sweep.run_dir(variant, seed)
    if (run_dir / "results.json").exists():
        # A results.json in a cell folder is not evidence (anyone can write one, e.g. 99% for a diverged cell):
        # the figures the study records are computed again from the cell's sha256-verified checkpoints.
        log(f"{variant.name} seed {seed}: finished earlier ({run_dir}); its results are recomputed from its "
            "verified checkpoint")
    config = sweep.configs[variant.index]
    config = dataclasses.replace(config, train=dataclasses.replace(
        config.train, seed=seed, out_dir=str(run_dir.parent), run_name=run_dir.name))
    prepared = cache.get(config, log)
    if CheckpointStore(run_dir).step_files():
        log(f"{variant.name} seed {seed}: continuing {run_dir} from its checkpoint")
        place = [f"train.device={json.dumps(config.train.device)}"]
        if config.data.data_dir is not None:
            place.append(f"data.data_dir={json.dumps(config.data.data_dir)}")
        return resume(run_dir, place, log, prepared=prepared)
    if run_dir.exists():  # stopped before its first checkpoint: nothing there is worth keeping
        shutil.rmtree(run_dir)
    log(f"{variant.name} seed {seed}: training in {run_dir}")
    return train(config, log, prepared)


def failed_cells(study) -> list:
    """The newest trial of every cell whose trials all failed (a non-finite loss, a full disk...)."""
    from optuna.trial import TrialState

    cells: dict[str, list] = {}
    for trial in study.get_trials(deepcopy=False):
        params = trial.system_attrs.get("fixed_params") or trial.params
        cells.setdefault(json.dumps(params, sort_keys=True), []).append(trial)
    return [max(trials, key=lambda t: t.number) for trials in cells.values()
            if all(t.state == TrialState.FAIL for t in trials)]


def retry_failed(study, log: Callable[[str], None] = print) -> int:
    """Queue again every cell whose trials all failed; returns how many. Run it from one worker: two workers
    doing it at once would queue such a cell twice."""
    failed = failed_cells(study)
    for trial in failed:
        log(f"trial {trial.number} ({trial.user_attrs.get('variant')} seed {trial.user_attrs.get('seed')}) failed "
            f"({trial.user_attrs.get('error', 'no message')}): queued again")
        requeue(study, trial)
    return len(failed)


def run_sweep(sweep: Sweep, log: Callable[[str], None] = print, retry: bool = False) -> dict[str, int]:
    """Work on the sweep's queue until every cell is done (by this worker or others); with `retry`, cells that
    failed are queued again first."""
    from cifarkit.train.stopping import TrainingInterrupted

    study = open_study(sweep, log)
    if retry:
        retry_failed(study, log)
    cache = PreparedCache()

    def run_trial(trial) -> float:
        variant = sweep.variants[trial.suggest_int("variant", 0, len(sweep.variants) - 1)]
        seed = trial.suggest_int("seed", sweep.seeds[0], sweep.seeds[-1])
        results = run_cell(sweep, variant, seed, cache, log)
        for split in ("val", "test"):
            if results.get(split):
                trial.set_user_attr(f"{split}_top1", results[split]["top1"])
                trial.set_user_attr(f"{split}_loss", results[split]["loss"])
        chosen = results["val"] or results["test"]  # the study's value: validation top-1 (test without a split)
        return chosen["top1"]

    counts = run_queue(study, run_trial, log, is_interruption=lambda e: isinstance(e, TrainingInterrupted))
    # cells that failed in this run or an earlier one (a re-run of an all-failed sweep has nothing left to do)
    counts["failed_cells"] = len(failed_cells(study))
    return counts
