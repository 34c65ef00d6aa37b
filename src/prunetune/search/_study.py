"""Optuna storage, study and sampler set-up shared by search, report, dashboard and export."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import optuna

from ..errors import PrunetuneError
from ..registry import SAMPLERS
from ._samplers import make_sampler  # re-exported: importers of make_sampler from here

__all__ = [
    "DEFAULT_STORAGE",
    "DEFAULT_STUDY",
    "make_storage",
    "open_study",
    "load_study",
    "find_study",
    "make_sampler",
    "SAMPLERS",
    "StudyLock",
    "trial_counts",
    "check_writable",
]

DEFAULT_STORAGE = "sqlite:///prunetune.db"
DEFAULT_STUDY = "prunetune"  # prefix: the default name carries the budget (default_study_name)
#: Seconds between heartbeats of a running trial, and after which a silent one counts as dead.
HEARTBEAT_INTERVAL, GRACE_PERIOD = 5, 20


def _sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL (None for in-memory and other databases)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    if path.startswith("file:"):  # an SQLite URI (with uri=true): file:/abs/path or file:rel/path
        path = path.removeprefix("file:")
    return None if path in ("", ":memory:") else Path(path)


def _first_line(e: BaseException) -> str:
    """The most specific one-line description of a storage error (its database cause, if any)."""
    cause = e
    while cause.__cause__ is not None:
        cause = cause.__cause__
    for err in (cause, e):
        text = str(getattr(err, "orig", None) or err).strip()
        if text:
            return text.splitlines()[0][:200]
    return type(e).__name__


def _storage_error(url: str, e: BaseException, doing: str = "open") -> PrunetuneError:
    msg = _first_line(e)
    hint = ""
    if (
        "readonly" in msg.replace("-", "").replace(" ", "").lower()
        or "permission denied" in msg.lower()
    ):
        hint = (
            "; the storage is read-only for this user: make it writable or pass another --storage"
        )
    return PrunetuneError(f"cannot {doing} storage {url!r}: {msg}{hint}")


def check_writable(url: str) -> None:
    """Fails in one line when a SQLite storage (or the folder that would hold it) is read-only."""
    path = _sqlite_path(url)
    if path is None:
        return
    if path.is_dir():
        raise PrunetuneError(
            f"storage {url!r} names a directory; give a file, e.g. sqlite:///{path}/prunetune.db"
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PrunetuneError(
            f"storage {url!r}: folder {parent} does not exist; create it or pass another --storage"
        )
    if "mode=ro" in url.partition("?")[2] or "immutable=1" in url.partition("?")[2]:
        raise PrunetuneError(
            f"storage {url!r} is opened read-only; a search writes to its study: "
            f"drop mode=ro/immutable=1 or pass another --storage"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise PrunetuneError(
            f"storage {url!r} is read-only; make {path} writable or pass another --storage"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PrunetuneError(
            f"storage {url!r}: folder {parent} is not writable (SQLite writes its journal "
            f"there); make it writable or pass another --storage"
        )


@contextmanager
def _creation_lock(url: str):
    """Serialises Optuna's table creation between processes that start together.

    Optuna creates its tables on first use; two processes doing it at once on a fresh
    PostgreSQL database collide (``pg_type_typname_nsp_index``). A session-level advisory
    lock makes one process create them while the others wait. SQLite databases are local
    files: an exclusive ``flock`` on their folder does the same without leaving a file.
    """
    if url.startswith("postgresql"):
        with _pg_advisory_lock(url, _lock_key("prunetune:schema")):
            yield
        return
    path = _sqlite_path(url)
    if path is not None and (path.parent if str(path.parent) else Path(".")).is_dir():
        with _flock(path.parent if str(path.parent) else Path(".")):
            yield
        return
    yield


def _engine_kwargs(url: str) -> dict:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    return {}


def _lock_key(text: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``."""
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


@contextmanager
def _pg_advisory_lock(url: str, key: int):
    import sqlalchemy

    engine = sqlalchemy.create_engine(
        url, poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(url)
    )
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        engine.dispose()


@contextmanager
def _flock(path: Path):
    try:
        import fcntl
    except ImportError:  # not on POSIX: SQLite's own locking is all there is
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class StudyLock:
    """An inter-process lock per study: taken while a worker counts trials and starts one.

    ``--n-trials`` is a study total shared by every worker: a worker counts the finished and
    running trials and starts a new one only below the total, and both steps happen under
    this lock so that two workers never take the last slot together. PostgreSQL uses an
    advisory lock (released by the server if the process dies); SQLite an ``flock`` on the
    database file. Other databases get no lock (the total may then be exceeded by the number
    of workers minus one).
    """

    def __init__(self, url: str, study_name: str):
        self.url, self.key = url, _lock_key(f"prunetune:study:{study_name}")
        self._ctx = None

    def acquire(self) -> None:
        if self._ctx is not None:
            return
        if self.url.startswith("postgresql"):
            ctx = _pg_advisory_lock(self.url, self.key)
        elif _sqlite_path(self.url) is not None and _sqlite_path(self.url).is_file():
            ctx = _flock(_sqlite_path(self.url))
        else:
            ctx = nullcontext()
        ctx.__enter__()
        self._ctx = ctx

    def release(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            ctx.__exit__(None, None, None)


def make_storage(
    url: str, heartbeat: bool = True, grace_period: int | None = None, must_exist: bool = False
) -> optuna.storages.RDBStorage:
    """An RDB storage (SQLite, PostgreSQL, ... any SQLAlchemy URL) with trial heartbeats.

    A trial whose process dies stops beating; after the grace period the next search on the
    study marks it failed and re-enqueues its parameters once (RetryHeartbeatStaleTrialCallback).
    Processes starting together create Optuna's tables one at a time (see
    :func:`_creation_lock`). With ``must_exist``, a SQLite file that does not exist is an
    error instead of being created (commands that only read a study).
    """
    if not isinstance(url, str) or "://" not in url:
        raise PrunetuneError(
            f"storage {url!r} is not a URL; use e.g. sqlite:///prunetune.db or postgresql://host/db"
        )
    if grace_period is not None and grace_period <= HEARTBEAT_INTERVAL:
        raise PrunetuneError(
            f"grace_period={grace_period} s would mark running trials dead between their "
            f"heartbeats (every {HEARTBEAT_INTERVAL} s); use more than {HEARTBEAT_INTERVAL} s"
        )
    path = _sqlite_path(url)
    if must_exist and path is not None and not path.is_file():
        raise PrunetuneError(
            f"no study storage at {path} ({'a directory' if path.is_dir() else 'no such file'}); "
            f"run `prunetune search` first or pass the --storage it used"
        )
    kw = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat:
                kw = {
                    "heartbeat_interval": HEARTBEAT_INTERVAL,
                    "grace_period": grace_period or GRACE_PERIOD,
                    "heartbeat_stale_trial_callback": (
                        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                    ),
                }
            with _creation_lock(url):
                return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), **kw)
    except ImportError as e:
        raise PrunetuneError(
            f"storage {url!r} needs a database driver that is not installed ({e})"
        ) from None
    except PrunetuneError:
        raise
    except Exception as e:  # sqlalchemy raises many types for bad URLs / unreachable servers
        raise _storage_error(url, e) from None


def open_study(
    storage: str,
    study_name: str,
    sampler: optuna.samplers.BaseSampler | None,
    heartbeat: bool = True,
    grace_period: int | None = None,
) -> optuna.Study:
    """Creates ``study_name`` (or loads it when it exists) with our two objectives."""
    st = make_storage(storage, heartbeat, grace_period)
    try:
        return optuna.create_study(
            study_name=study_name,
            storage=st,
            sampler=sampler,
            directions=["maximize", "minimize"],
            load_if_exists=True,
        )
    except (optuna.exceptions.StorageInternalError, _sqlalchemy_error()) as e:
        raise _storage_error(storage, e, "write to") from None


def _sqlalchemy_error() -> type[Exception]:
    import sqlalchemy.exc

    return sqlalchemy.exc.SQLAlchemyError


def find_study(storage: str, study_name: str) -> optuna.Study | None:
    """The study when it exists, else None; creates nothing (not even a SQLite file)."""
    path = _sqlite_path(storage)
    if path is not None and not path.is_file():
        return None
    st = make_storage(storage, heartbeat=False)
    try:
        return optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        return None


def default_study_name(budget: str) -> str:
    """``flops=50%`` -> ``prunetune-flops50``: one default study per budget in one storage."""
    import re

    return f"{DEFAULT_STUDY}-" + re.sub(r"[^A-Za-z0-9.]+", "", str(budget).replace("=", ""))


def load_study(storage: str, study_name: str | None = None) -> optuna.Study:
    """An existing study (for export, report, dashboard); never creates a storage or a study.

    Without a name, the storage must hold exactly one study.
    """
    st = make_storage(storage, heartbeat=False, must_exist=True)
    if study_name is None:
        names = optuna.get_all_study_names(st)
        if len(names) != 1:
            raise PrunetuneError(
                f"{storage} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                f"pass --study NAME"
            )
        study_name = names[0]
    try:
        return optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = optuna.get_all_study_names(st)
        raise PrunetuneError(
            f"no study named {study_name!r} in {storage}; studies there: {names or 'none'}"
        ) from None


def trial_counts(study: optuna.Study) -> tuple[int, int]:
    """``(finished, running)``: complete + pruned trials, and trials running now."""
    TS = optuna.trial.TrialState
    done = running = 0
    for t in study.get_trials(deepcopy=False, states=(TS.COMPLETE, TS.PRUNED, TS.RUNNING)):
        if t.state == TS.RUNNING:
            running += 1
        else:
            done += 1
    return done, running
