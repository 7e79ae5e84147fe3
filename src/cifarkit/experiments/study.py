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
import functools
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
from cifarkit.experiments import optuna_private


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


# query parameters that carry secrets in database URLs (libpq's password / sslpassword, tokens of cloud drivers)
SECRET_PARAMETERS = ("password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token", "api_key")


def masked(url: str) -> str:
    """The URL with every secret hidden (for logs, errors and the files an experiment writes): the password in
    the user part, however many '@' it holds unencoded (the parser reads up to the first one; the host
    starts after the last), and secret query parameters."""
    from sqlalchemy.engine import make_url

    scheme, sep, rest = url.partition("://")
    head, question, query = rest.partition("?")
    if sep and "@" in head:
        userinfo, _, host = head.rpartition("@")
        user = userinfo.split(":", 1)[0]
        url = f"{scheme}://{user}{':***' if ':' in userinfo else ''}@{host}{question}{query}"
    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy can read: opening it will say so; still no secrets in the text
        return _mask_query_text(url)
    query = {k: ("***" if k.lower() in SECRET_PARAMETERS else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def _mask_query_text(text: str) -> str:
    import re

    names = "|".join(SECRET_PARAMETERS)
    return re.sub(rf"(?i)\b({names})=[^&\s]*", r"\1=***", text)


def _scrub(text: str, url: str) -> str:
    """An error text with the URL's secrets removed (drivers quote the connection string in some errors)."""
    from sqlalchemy.engine import make_url

    secrets = []
    with contextlib.suppress(Exception):
        parsed = make_url(url)
        secrets += [parsed.password] if parsed.password else []
        secrets += [v for k, v in parsed.query.items() if k.lower() in SECRET_PARAMETERS and isinstance(v, str)]
    scheme, sep, rest = url.partition("://")
    userinfo = rest.partition("?")[0].rpartition("@")[0]
    if sep and ":" in userinfo:
        password = userinfo.split(":", 1)[1]
        # an unescaped '@' splits the password where a driver splits it (part of it then reads as the host's
        # name, and the driver's error quotes that host): every piece is a secret of its own
        secrets += [password, *password.split("@")]
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(str(secret), "***")
    return _mask_query_text(text.replace(url, masked(url)))


def open_storage(url: str, heartbeat_seconds: int | None = HEARTBEAT_SECONDS,
                 grace_seconds: int | None = GRACE_SECONDS, create: bool = True):
    """An Optuna RDBStorage with heartbeats, or an ExperimentError that names the URL and the cause. A database
    that holds other tables than Optuna's (another program's) is refused before anything is written to it;
    with `create=False` (reading a study back) a SQLite file that does not exist is an error, not a new one."""
    _quiet_optuna()
    import optuna
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # several worker processes on one file: wait for a lock instead of failing at once
        engine_kwargs["connect_args"] = {"timeout": 60}
        path = url.removeprefix("sqlite:///")
        if path and path != url and not path.startswith(":"):
            if not create and not Path(path).is_file():
                raise ExperimentError(f"no study database at {path}")
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ExperimentError(f"cannot create the folder of the study database {path}: {e.strerror}") from None
    _check_foreign_tables(url, engine_kwargs)
    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds,
                                              grace_period=grace_seconds)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError) as e:
            error = e
            if not _lost_table_creation_race(e):
                break
            time.sleep(0.2 * (attempt + 1))  # another worker created the tables meanwhile: open them
    cause = _scrub(str(getattr(error, "orig", None) or error).strip().splitlines()[0], url)
    if isinstance(error, ImportError):
        cause += " (for PostgreSQL: pip install 'psycopg[binary]', or cifarkit[postgres])"
    if "readonly" in cause.replace(" ", "").lower() or "read-only" in cause.lower():
        raise ExperimentError(f"the study storage {masked(url)} is read-only ({cause}); point --storage at a "
                              "database this user can write")
    raise ExperimentError(f"cannot open the study storage {masked(url)}: {cause}. Check the URL (e.g. "
                          "sqlite:///study.db or postgresql://user:password@host/db) and that the database "
                          "server is reachable")


OPTUNA_TABLES = {"studies", "version_info", "alembic_version", "trials", "study_directions", "study_user_attributes",
                 "study_system_attributes", "trial_user_attributes", "trial_system_attributes", "trial_params",
                 "trial_values", "trial_intermediate_values", "trial_heartbeats"}


def _check_foreign_tables(url: str, engine_kwargs: dict) -> None:
    """Refuse a database that is neither empty nor an Optuna study (Optuna would add its tables to it)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except Exception:  # unreachable, a bad URL, a missing driver: opening the storage says which, below
        return
    foreign = sorted(tables - OPTUNA_TABLES)
    if foreign:
        raise ExperimentError(f"the study storage {masked(url)} already holds tables of another program "
                              f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); cifarkit never adds "
                              "its tables to such a database: give an empty one or an Optuna study's")


def storage_errors(url: str):
    """A context in which database errors during an experiment (a read-only file, a lost server) become one
    ExperimentError line with the URL's secrets hidden, not a chain of tracebacks."""
    import optuna
    import sqlalchemy.exc

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
            root = e
            while root.__cause__ is not None and not isinstance(root, sqlalchemy.exc.SQLAlchemyError):
                root = root.__cause__  # Optuna wraps the database's own error: say that one
            cause = _scrub(str(getattr(root, "orig", None) or root).strip().splitlines()[0], url)
            if "readonly" in cause.replace(" ", "").lower():
                raise ExperimentError(f"the study storage {masked(url)} is read-only ({cause}); point --storage at a "
                                      "database this user can write") from None
            raise ExperimentError(f"the study storage {masked(url)} failed: {cause}; check that the database is "
                                  "reachable, then run the same command again") from None

    return guard()


def _lost_table_creation_race(error: Exception) -> bool:
    """Two workers creating the tables of a new database at the same moment: one of them gets this."""
    text = str(error).lower()
    return any(words in text for words in ("already exists", "duplicate key", "unique constraint"))


@functools.cache  # fixed for the life of a process; read once, not per lost-trial check
def _pid_namespace() -> str:
    """What makes a process id meaningful: this boot of this kernel and this PID namespace. Containers share
    host names and reuse PIDs; two workers judge each other's PIDs only when this matches."""
    import hashlib

    parts = []
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
        except OSError:
            return ""  # unknown: never judge another worker by its PID
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_pid_namespace() or 'unknown'}"


def _process_is_gone(worker: str) -> bool:
    """True only if `worker` ("host:pid:namespace") ran in this very PID namespace of this boot and that
    process no longer exists. Anything else (another machine, another container, an older worker name
    without a namespace) is judged by its heartbeat alone."""
    host, pid, namespace = (worker.split(":") + ["", "", ""])[:3]
    ours = _pid_namespace()
    if not ours or namespace != ours or host != socket.gethostname() or not pid.isdigit():
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


def transition(study, trial_id: int, before, after) -> bool:
    """Move a trial from state `before` to `after` in one conditional UPDATE: True for exactly one of several
    workers racing for it. (Optuna's own `set_trial_state_values` reads, then writes; SQLite ignores its
    SELECT ... FOR UPDATE, so two workers can both see a trial waiting and both take it.)"""
    import sqlalchemy

    trials = optuna_private.trial_table()
    now = datetime.now()  # naive local time, as Optuna writes it
    values: dict[str, Any] = {"state": after}
    if after.name == "RUNNING":
        values["datetime_start"] = now
    elif after.is_finished():
        values["datetime_complete"] = now
    statement = (sqlalchemy.update(trials).where(trials.trial_id == trial_id, trials.state == before)
                 .values(**values))
    with optuna_private.rdb_storage(study).engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def fail_lost_trials(study) -> list[int]:
    """Fail the running trials whose worker is gone (a heartbeat older than the grace period, or a dead process
    on this machine) and put them back in the queue; returns their numbers. Each lost trial is failed by
    exactly one worker (`transition`), so it is queued again once."""
    import optuna
    from optuna.trial import TrialState

    stale = optuna_private.stale_trial_ids(study)  # the storage's own heartbeat query
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if optuna_private.trial_id(trial) in stale:
            why = "its heartbeat stopped"
        elif worker and worker != worker_name() and _process_is_gone(worker):
            why = f"worker {worker} is gone"
        else:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # before: a finished trial takes
            optuna_private.set_user_attr(study, trial, "error", why)             # no attributes
        if transition(study, optuna_private.trial_id(trial), TrialState.RUNNING, TrialState.FAIL):
            requeue(study, trial)
            lost.append(trial.number)
    return lost


def claim_waiting_trial(study):
    """Atomically take the oldest waiting trial (RUNNING, with this worker's name), or None if none is left."""
    from optuna.trial import TrialState

    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if not transition(study, optuna_private.trial_id(frozen), TrialState.WAITING, TrialState.RUNNING):
            continue  # another worker took it
        optuna_private.set_user_attr(study, frozen, "worker", worker_name())
        return optuna_private.trial_for(study, frozen)
    return None


def run_queue(study, run_trial: Callable[[Any], float], log: Callable[[str], None], poll_seconds: float = 2.0,
              is_interruption: Callable[[BaseException], bool] = lambda e: False) -> dict[str, int]:
    """Run waiting trials until none is waiting or running anywhere. A trial that raises a CifarkitError is
    failed (its message kept) and the worker goes on; an interruption (Ctrl-C, SIGTERM, or what
    `is_interruption` says) fails it, puts it back in the queue and stops this worker."""
    import optuna
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
        with heartbeat(optuna_private.storage(study), optuna_private.trial_id(trial)):
            try:
                value = run_trial(trial)
            except (KeyboardInterrupt, CifarkitError) as e:
                interrupted = isinstance(e, KeyboardInterrupt) or is_interruption(e)
                optuna_private.set_user_attr(study, trial, "error", str(e) or type(e).__name__)
                study.tell(trial, state=TrialState.FAIL)
                if interrupted:
                    requeue(study, optuna_private.frozen_trial(study, trial))
                    raise
                counts["failed"] += 1
                log(f"trial {trial.number} failed: {e}")
                continue
            except Exception as e:  # a bug, not a bad trial: record it, and stop this worker with its traceback
                optuna_private.set_user_attr(study, trial, "error", f"{type(e).__name__}: {e}")
                study.tell(trial, state=TrialState.FAIL)
                raise
        try:
            study.tell(trial, value)
        except optuna.exceptions.UpdateFinishedTrialError:  # judged lost (a stale heartbeat) and taken over
            log(f"trial {trial.number} was taken over by another worker while it ran (its heartbeat went stale); "
                "that worker's result counts")
            continue
        counts["done"] += 1

