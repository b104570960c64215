"""The study layout, known once: where a study's database lives, how a storage is opened (for writing by the engine,
for reading by results/dashboard/export), how a URL is shown without its password, the objectives and their
directions, and the package versions a study records. Layout of the stored data: docs/storage.md.

A study named ``X`` lives in ``studies/X/`` (relative to the working directory) with the default storage URL
``sqlite:///studies/X/study.db``; any SQLAlchemy URL (PostgreSQL for several drivers) can replace it. Its
sub-studies (``X.validate``, ``X.calibrate.e<E>f<F>``: ``nas validate``/``nas calibrate``) share its storage and
keep their files in ``studies/X/<sub-study>/``. Optuna's
storage is used only through its public API (``optuna.storages.RDBStorage`` methods with explicit ids). Optuna and
SQLAlchemy are imported inside the functions that need them, so reading this module costs nothing.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.errors import StudyError

STUDIES_DIR = Path("studies")
DB_NAME = "study.db"
# The direction each known objective always has (a study file may not change them; old studies read by name).
DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    "throughput": "maximize",
    "params": "minimize",
    "flops": "minimize",
    "latency": "minimize",
}
VERSIONED = ("torch", "timm", "optuna", "ray", "pydantic", "sqlalchemy", "safetensors", "mixer-nas")


@dataclass(frozen=True)
class Objective:
    """One objective of a study, in the order of ``trial.values``."""

    name: str
    direction: str  # "maximize" | "minimize"


# ---------------------------------------------------------------------------------------------- URLs
_SUB_STUDY = re.compile(r"^(?P<parent>.+?)\.(validate|calibrate\.e\d+f[0-9.e+-]+?(\.test)?(\.seed\d+)?)$")


def parent_study(name: str) -> str | None:
    """The study a sub-study (``X.validate``, ``X.calibrate.e<E>f<F>``) belongs to; None for a study."""
    m = _SUB_STUDY.match(name)
    return m.group("parent") if m else None


def study_dir(name: str, base: Path | None = None) -> Path:
    parent = parent_study(name)
    return (base or STUDIES_DIR) / parent / name if parent else (base or STUDIES_DIR) / name


def default_storage_url(name: str, base: Path | None = None) -> str:
    folder = (base or STUDIES_DIR) / (parent_study(name) or name)
    return f"sqlite:///{(folder / DB_NAME).as_posix()}"


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (None for other URLs and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?")[0]
    return None if path in ("", ":memory:") else Path(path)


def safe_url(url: str) -> str:
    """The URL with any password removed (what may be printed or written into an export)."""
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        u = make_url(url)
    except (ImportError, ArgumentError, ValueError):  # not a URL SQLAlchemy can parse: drop any credentials part
        return url.split("@")[-1] if "@" in url else url
    if u.password is not None:
        u = u._replace(password=None)  # URL is a namedtuple; URL.set() ignores None
    return u.render_as_string(hide_password=False)


def first_line(e: BaseException) -> str:
    """The first line of the root cause (Optuna wraps SQLAlchemy errors in a generic message)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(e).split()) if str(e).strip() else type(e).__name__
    return text[:200]


def fast_sqlite(engine: Any) -> None:
    """A study's SQLite file in WAL mode with ``synchronous=NORMAL``: a commit costs no fsync (the engine commits
    once per stored attribute), a committed trial survives a crash of the process, and a reader (status,
    dashboard) never blocks the writer. Other databases are left alone."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before (schema creation) are replaced by ones with the pragmas


def _engine_kwargs(url: str) -> dict[str, Any]:
    # SQLite: a reader next to the writer waits on its lock instead of failing; servers: drop dead connections
    return {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}


def create_engine(url: str) -> Any:
    """A SQLAlchemy engine with the settings every study database gets (those of :func:`create_storage`)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, **_engine_kwargs(url))
    fast_sqlite(engine)
    return engine


# ---------------------------------------------------------------------------------------------- storages
def create_storage(url: str, storage_class: Any = None) -> Any:
    """The engine's (writer's) storage: creates the SQLite folder and Optuna's schema if needed. ``storage_class``:
    an ``optuna.storages.RDBStorage`` subclass (the engine's ``OwnedStorage``); default ``RDBStorage``.

    Two drivers creating an empty database's schema at once race; the loser sees the winner's tables half-made
    and retries, by which time the schema is simply there.
    """
    import optuna
    import sqlalchemy as sa

    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            storage = (storage_class or optuna.storages.RDBStorage)(url, engine_kwargs=_engine_kwargs(url))
            fast_sqlite(storage.engine)
            return storage
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as e:
            racing = not isinstance(e, sa.exc.OperationalError) or "locked" in str(e)
            if attempt == 4 or not racing:
                raise StudyError(f"storage {safe_url(url)}: cannot open ({first_line(e)})") from None
            time.sleep(1.0 + attempt)
        except Exception as e:  # connection refused, bad credentials, missing driver...
            raise StudyError(f"storage {safe_url(url)}: cannot open ({first_line(e)})") from None
    raise AssertionError("unreachable")


def open_storage(url: str) -> Any:
    """A reader's storage: never creates a database or a schema as a side effect of reading."""
    import optuna
    import sqlalchemy.exc

    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise StudyError(
            f"storage {safe_url(url)}: no database file at {path}; run `nas search` first or pass --storage URL"
        )
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True, engine_kwargs=_engine_kwargs(url))
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, ValueError, ImportError, RuntimeError) as e:
        raise StudyError(f"storage {safe_url(url)}: cannot open ({first_line(e)}); check the --storage URL") from None


_URLS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def remember_url(study: Any, url: str) -> Any:
    """Note which storage URL a study object came from (Optuna does not say publicly); returns the study."""
    _URLS[study] = url
    return study


def url_of(study: Any) -> str:
    """The storage URL a study was opened from through this module ('' if it was not)."""
    return _URLS.get(study, "")


# ---------------------------------------------------------------------------------------------- provenance
def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a study's figures depend on ("absent" when not installed)."""
    out = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out
