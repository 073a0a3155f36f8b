"""The study and its storage: the names it records, the Optuna RDB it lives in (a heartbeat, so a killed worker's
trial turns FAIL), the settings it refuses to mix, and how many trials count toward `search.n_trials`."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from netslim.config import Config, ConfigError

LAMBDA_PARAM = "log10_lambda"  # λ = 10 ** this, on a grid of 1 / lambda_steps_per_decade
LR_PARAM = "finetune_lr"
METRIC = "val_acc"  # the objective's name in the study (set_metric_names)
# The user attribute of the pruned model's vocabulary.NUM_PARAMS: under its older name, which the trials of stored
# studies (study.db, continued by every rerun) hold; trials.csv and best.json say num_params.
PARAMS_ATTR = "params"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)

# SQLAlchemy's URL for PostgreSQL through psycopg 3 (the `postgres` extra); a bare postgresql:// picks the dialect's
# default driver, which is psycopg 3 from SQLAlchemy 2.1 on and psycopg2 before.
POSTGRES_URL = "postgresql+psycopg://user:password@host:5432/netslim"

# Params whose change makes earlier trials incomparable: a study refuses to mix them.
STUDY_SETTINGS = (
    "experiment.seed",
    "data.dataset",
    "data.val_size",
    "data.train_subset",
    "data.test_subset",
    "model.arch",
    "model.width",
    "model.bn_init",
    "train.batch_size",
    "train.lr",
    "train.weight_decay",
    "train.milestones",
    "train.lr_gamma",
    "train.schedule",
    "train.augment",
    "finetune.batch_size",
    "finetune.weight_decay",
    "finetune.milestones",
    "finetune.lr_gamma",
    "finetune.schedule",
    "finetune.augment",
    "prune.min_channels",
    "prune.bias_compensation",
    "prune.recalibration_batches",
    "constraints.min_accuracy",
    "constraints.max_params",
    "search.ratio",
    "search.train_epochs",
    "search.finetune_epochs",
)


def default_storage(config: Config) -> str:
    return f"sqlite:///{Path(config.paths.search_reports) / 'study.db'}"


def redact(url: str) -> str:
    """The storage URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not even a URL: show it as given
        return url


def open_storage(url: str, heartbeat_interval: int, attempts: int = 3) -> optuna.storages.RDBStorage:
    """An RDB storage with a heartbeat; ConfigError naming the URL when it cannot be opened.

    Workers that start together race to create the tables of a fresh database, so that is retried.
    """
    import sqlalchemy.exc

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}  # workers on one machine wait for the lock
    else:
        engine_kwargs = {"pool_pre_ping": True}  # long trials outlive idle server connections
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=2 * heartbeat_interval,
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(1 + attempt)
        except ImportError as e:
            raise ConfigError(
                f"search.storage: {redact(url)} needs the database driver {e.name or 'for it'}, which is not "
                "installed; for PostgreSQL install the extra (pip install 'netslim[postgres]', psycopg 3), or "
                "leave search.storage null for the local SQLite file"
            ) from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
            detail = " ".join(str(e).split())[:160]
            raise ConfigError(
                f"search.storage: {redact(url)} cannot be opened ({type(e).__name__}: {detail}); check the URL "
                f"(e.g. {POSTGRES_URL}) and that the database server accepts connections, or leave it null for "
                "the local SQLite file"
            ) from None
    raise AssertionError("unreachable")


def study_settings(config: Config) -> dict[str, Any]:
    flat = config.to_flat_dict()
    return json.loads(json.dumps({key: flat[key] for key in STUDY_SETTINGS}))


def check_settings(study: optuna.Study, config: Config, url: str) -> None:
    """Record the settings on a new study; refuse to add trials run with other settings to an old one."""
    wanted = study_settings(config)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", wanted)
        return
    for key, value in wanted.items():
        if stored.get(key) != value:
            raise ConfigError(
                f"{key}: {value!r}, but study {study.study_name!r} in {redact(url)} ran its trials with "
                f"{stored.get(key)!r}; restore that value, pass --study-name NEW_NAME for a new study, "
                "or delete the old study"
            )


def open_study(config: Config, url: str) -> optuna.Study:
    """Create or load the study (maximize validation accuracy) and fail the trials of dead workers."""
    storage = open_storage(url, config.search.heartbeat_interval)
    study = optuna.create_study(
        storage=storage,
        study_name=config.search.study_name,
        direction="maximize",
        load_if_exists=True,
        # Unseeded: workers and restarts must not propose the same random startup trials again.
        sampler=optuna.samplers.TPESampler(constant_liar=True),
        # Fine-tune epochs are the steps; step 0 (the pruned model before fine-tuning) never prunes.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
    )
    check_settings(study, config, url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # optuna-dashboard and Optuna's plots label the objective with this, not "Objective 0"; the same name as
        # trials.csv's column and the trial runs' MLflow metric.
        study.set_metric_names([METRIC])
        optuna.storages.fail_stale_trials(study)
    return study


def counted(study: optuna.Study) -> int:
    """Trials that count toward n_trials: finished ones and those running on some worker."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def trial_budget(n_trials: int) -> MaxTrialsCallback:
    """Stop this worker once the study (all workers together) holds n_trials counted trials."""
    return MaxTrialsCallback(n_trials, states=COUNTED)
