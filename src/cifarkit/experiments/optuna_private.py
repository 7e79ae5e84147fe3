"""The one place cifarkit reaches into Optuna's private API (what its public API does not offer: a trial's
storage id, the RDB storage under Optuna's cache, its stale-heartbeat query, its trial table). Everything
else in cifarkit uses Optuna's public API only. tests/test_experiments.py::test_optuna_private_api_is_there
fails loudly, naming the attribute, when an Optuna release moves one of these; pyproject.toml pins the
Optuna range they were tested with (TESTED_OPTUNA).
"""

from __future__ import annotations

from typing import Any

TESTED_OPTUNA = ">=4.9,<5.1"  # the pin in pyproject.toml; raise it after the test passes on a newer release


def storage(study) -> Any:
    """The study's storage (Optuna's cached wrapper around the database)."""
    return study._storage


def rdb_storage(study) -> Any:
    """The RDBStorage under the cache (whose engine cifarkit runs its one conditional UPDATE on)."""
    wrapped = study._storage
    return getattr(wrapped, "_backend", wrapped)


def study_id(study) -> int:
    return study._study_id


def trial_id(trial) -> int:
    """A trial's (or frozen trial's) id in the storage: what the storage's own methods take."""
    return trial._trial_id


def stale_trial_ids(study) -> set[int]:
    """The running trials whose heartbeat is older than the storage's grace period (its own query)."""
    return set(rdb_storage(study)._get_stale_trial_ids(study._study_id))


def trial_table():
    """The SQLAlchemy model of Optuna's trials table."""
    from optuna.storages._rdb import models

    return models.TrialModel


def trial_for(study, frozen) -> Any:
    """A live `optuna.trial.Trial` (suggest/report) for a trial this worker has claimed in the storage."""
    import optuna

    return optuna.trial.Trial(study, frozen._trial_id)


def set_user_attr(study, trial, key: str, value) -> None:
    """Set a user attribute of any trial (also one already failed), through the storage."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def frozen_trial(study, trial) -> Any:
    return study._storage.get_trial(trial._trial_id)
