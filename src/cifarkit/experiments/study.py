"""Optuna studies as the record of an experiment: where they live, which trial is whose, and workers that
share one study without ever running a trial twice.

A study lives in a relational database: SQLite in the experiment's folder by default, or any SQLAlchemy URL
(PostgreSQL when several machines share a study). Every worker records a heartbeat for the trial it runs;
a trial whose worker stopped sending them (SIGKILL, a machine lost) is failed by the next worker and put back
in the queue, where it is picked up again and continues from its checkpoint. A worker on the same machine as
a dead one does not wait for the heartbeat to go stale: it sees that the process is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cifarkit.errors import CifarkitError


class ExperimentError(CifarkitError):
    """A sweep or tuning study that cannot start or continue (storage, study, specification)."""


HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60  # a trial without a heartbeat for this long is taken to have lost its worker


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def masked(url: str) -> str:
    """The URL without its password (for logs and the files an experiment writes)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can read: opening it will say so
        return url


def open_storage(url: str, heartbeat_seconds: int = HEARTBEAT_SECONDS, grace_seconds: int = GRACE_SECONDS):
    """An Optuna RDBStorage with heartbeats, or an ExperimentError that names the URL and the cause."""
    _quiet_optuna()
    import optuna
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # several worker processes on one file: wait for a lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
        path = url.removeprefix("sqlite:///")
        if path and path != url and not path.startswith(":"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds,
                                              grace_period=grace_seconds)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError) as e:
            error = e
            if not _lost_table_creation_race(e):
                break
            time.sleep(0.2 * (attempt + 1))  # another worker created the tables meanwhile: open them
    cause = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    if isinstance(error, ImportError):
        cause += " (for PostgreSQL: pip install 'psycopg[binary]', or cifarkit[postgres])"
    raise ExperimentError(f"cannot open the study storage {masked(url)}: {cause}. Check the URL (e.g. "
                          "sqlite:///study.db or postgresql://user:password@host/db) and that the database "
                          "server is reachable")


def _lost_table_creation_race(error: Exception) -> bool:
    """Two workers creating the tables of a new database at the same moment: one of them gets this."""
    text = str(error).lower()
    return any(words in text for words in ("already exists", "duplicate key", "unique constraint"))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_is_gone(worker: str) -> bool:
    """True if `worker` ("host:pid") ran on this machine and that process no longer exists."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        return False
    return False


@contextlib.contextmanager
def heartbeat(storage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat now and every interval until the block ends."""
    interval = storage.get_heartbeat_interval() or HEARTBEAT_SECONDS
    stop = threading.Event()
    storage.record_heartbeat(trial_id)

    def beat():
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is retried; a long outage makes the trial stale
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def requeue(study, trial) -> None:
    """Put a failed or stopped trial back in the queue with the same parameters and attributes; the worker that
    picks it up continues the same run folder (from its checkpoint)."""
    params = trial.system_attrs.get("fixed_params") or trial.params
    attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("worker", "error")}
    attrs["retry_of"] = trial.number
    study.enqueue_trial(params, user_attrs=attrs)


def _backend(study):
    """The study's RDBStorage (Optuna wraps it in a cache)."""
    storage = study._storage
    return getattr(storage, "_backend", storage)


def transition(study, trial_id: int, before, after) -> bool:
    """Move a trial from state `before` to `after` in one conditional UPDATE: True for exactly one of several
    workers racing for it. (Optuna's own `set_trial_state_values` reads, then writes; SQLite ignores its
    SELECT ... FOR UPDATE, so two workers can both see a trial waiting and both take it.)"""
    import sqlalchemy
    from optuna.storages._rdb import models

    now = datetime.now()  # naive local time, as Optuna writes it
    values: dict[str, Any] = {"state": after}
    if after.name == "RUNNING":
        values["datetime_start"] = now
    elif after.is_finished():
        values["datetime_complete"] = now
    statement = (sqlalchemy.update(models.TrialModel)
                 .where(models.TrialModel.trial_id == trial_id, models.TrialModel.state == before)
                 .values(**values))
    with _backend(study).engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def fail_lost_trials(study) -> list[int]:
    """Fail the running trials whose worker is gone (a heartbeat older than the grace period, or a dead process
    on this machine) and put them back in the queue; returns their numbers. Each lost trial is failed by
    exactly one worker (`transition`), so it is queued again once."""
    import optuna
    from optuna.trial import TrialState

    backend = _backend(study)
    stale = set(backend._get_stale_trial_ids(study._study_id))  # the storage's own heartbeat query
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if trial._trial_id in stale:
            why = "its heartbeat stopped"
        elif worker and worker != worker_name() and _process_is_gone(worker):
            why = f"worker {worker} is gone"
        else:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # before: a finished trial takes
            backend.set_trial_user_attr(trial._trial_id, "error", why)          # no attributes
        if transition(study, trial._trial_id, TrialState.RUNNING, TrialState.FAIL):
            requeue(study, trial)
            lost.append(trial.number)
    return lost


def claim_waiting_trial(study):
    """Atomically take the oldest waiting trial (RUNNING, with this worker's name), or None if none is left."""
    import optuna
    from optuna.trial import TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if not transition(study, frozen._trial_id, TrialState.WAITING, TrialState.RUNNING):
            continue  # another worker took it
        study._storage.set_trial_user_attr(frozen._trial_id, "worker", worker_name())
        return optuna.trial.Trial(study, frozen._trial_id)
    return None


def run_queue(study, run_trial: Callable[[Any], float], log: Callable[[str], None], poll_seconds: float = 2.0,
              is_interruption: Callable[[BaseException], bool] = lambda e: False) -> dict[str, int]:
    """Run waiting trials until none is waiting or running anywhere. A trial that raises a CifarkitError is
    failed (its message kept) and the worker goes on; an interruption (Ctrl-C, SIGTERM, or what
    `is_interruption` says) fails it, puts it back in the queue and stops this worker."""
    from optuna.trial import TrialState

    counts = {"done": 0, "failed": 0}
    waited = False
    while True:
        for number in fail_lost_trials(study):
            log(f"trial {number}: its worker is gone; queued again (it continues from its checkpoint)")
        trial = claim_waiting_trial(study)
        if trial is None:
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return counts
            if not waited:
                log(f"waiting for {len(running)} running trial(s) of other workers (a stopped worker's trial is "
                    "taken over once its heartbeat is stale)")
                waited = True
            time.sleep(poll_seconds)
            continue
        waited = False
        with heartbeat(study._storage, trial._trial_id):
            try:
                value = run_trial(trial)
            except (KeyboardInterrupt, CifarkitError) as e:
                interrupted = isinstance(e, KeyboardInterrupt) or is_interruption(e)
                study._storage.set_trial_user_attr(trial._trial_id, "error", str(e) or type(e).__name__)
                study.tell(trial, state=TrialState.FAIL)
                if interrupted:
                    requeue(study, study._storage.get_trial(trial._trial_id))
                    raise
                counts["failed"] += 1
                log(f"trial {trial.number} failed: {e}")
                continue
            except Exception as e:  # a bug, not a bad trial: record it, and stop this worker with its traceback
                study._storage.set_trial_user_attr(trial._trial_id, "error", f"{type(e).__name__}: {e}")
                study.tell(trial, state=TrialState.FAIL)
                raise
        study.tell(trial, value)
        counts["done"] += 1

