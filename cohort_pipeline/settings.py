"""Every setting the environment gives, read in one place, and the data folder's layout.

`Settings.from_env()` reads each COHORT_PIPELINE_* variable once and checks it: a bad value is
a SettingsError naming the variable (e.g. `COHORT_PIPELINE_KEEP_WINDOWS='abc'`). An empty
variable counts as unset. No other module reads the environment (a test checks it). The
README's settings table lists every variable with its documented default (`VARIABLES`), and a
test holds the two equal.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date
from pathlib import Path

ENGINES = ("duckdb", "spark")


class SettingsError(ValueError):
    """An environment variable with a value the pipeline cannot use; names the variable."""


@dataclass(frozen=True)
class DataFolder:
    """Where each input, store and export lives inside the data folder."""

    root: Path

    @property
    def events(self) -> Path:
        return self.root / "events"

    def event_file(self, day: date, suffix: str = ".parquet") -> Path:
        """The daily events file of `day` (events/events-YYYY-MM-DD.parquet)."""
        return self.events / f"{EVENT_FILE_PREFIX}{day.isoformat()}{suffix}"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.csv"

    @property
    def opt_outs(self) -> Path:
        return self.root / "opt_outs.csv"

    @property
    def policy(self) -> Path:
        return self.root / "policy.yaml"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.duckdb"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts.jsonl"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def spark_stage(self) -> Path:
        return self.root / "spark_stage"

    @property
    def dagster_home(self) -> Path:
        """Where `make release` and `make run` keep Dagster's runs (the Makefile's DAGSTER_HOME)."""
        return self.root / "dagster_home"


EVENT_FILE_PREFIX = "events-"


def _path(raw: str) -> Path:
    return Path(raw)


def _date(raw: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError("expected a date, YYYY-MM-DD") from None


def _keep_windows(raw: str) -> int:
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(
            "expected a whole number of release dates, at least 1 (the date being released)"
        )
    return int(raw)


def _engine(raw: str) -> str:
    if raw.lower() not in ENGINES:
        raise ValueError(f"expected one of {', '.join(ENGINES)}")
    return raw.lower()


def _setting(env: str, documented: str, parse: Callable[[str], object] = str, default=None):
    """A field read from `env`; `documented` is its default as the README's table shows it."""
    meta = {"env": env, "documented": documented, "parse": parse}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """The pipeline's settings: defaults for the embedded setup, overridden by the environment."""

    data_dir: Path = _setting("COHORT_PIPELINE_DATA_DIR", "`data/`", _path, Path("data"))
    # None: the data folder's policy.yaml.
    policy: Path | None = _setting("COHORT_PIPELINE_POLICY", "`<data dir>/policy.yaml`", _path)
    # None: the policy's release.partitions_start.
    partitions_start: date | None = _setting(
        "COHORT_PIPELINE_PARTITIONS_START", "policy `release.partitions_start`", _date
    )
    duckdb_memory_limit: str = _setting(
        "COHORT_PIPELINE_DUCKDB_MEMORY_LIMIT", "DuckDB's", default=""
    )
    duckdb_temp_dir: str = _setting("COHORT_PIPELINE_DUCKDB_TEMP_DIR", "DuckDB's", default="")
    keep_windows: int = _setting("COHORT_PIPELINE_KEEP_WINDOWS", "`8`", _keep_windows, 8)
    engine: str = _setting("COHORT_PIPELINE_ENGINE", "`duckdb`", _engine, "duckdb")
    spark_master: str = _setting("COHORT_PIPELINE_SPARK_MASTER", "`local[2]`", default="local[2]")
    # None: the data folder's spark_stage/.
    spark_stage_dir: Path | None = _setting(
        "COHORT_PIPELINE_SPARK_STAGE_DIR", "`<data dir>/spark_stage`", _path
    )
    alert_webhook: str = _setting("COHORT_PIPELINE_ALERT_WEBHOOK", "unset", default="")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` (default: this process's environment) gives; SettingsError
        naming the variable for a value that cannot be used."""
        environ = os.environ if environ is None else environ
        values = {}
        for spec in fields(cls):
            raw = environ.get(spec.metadata["env"], "").strip()
            if not raw:
                continue  # unset or empty: the default
            try:
                values[spec.name] = spec.metadata["parse"](raw)
            except ValueError as exc:
                raise SettingsError(f"{spec.metadata['env']}={raw!r}: {exc}") from None
        return cls(**values)

    def with_data_dir(self, data_dir: Path | str) -> Settings:
        return replace(self, data_dir=Path(data_dir))

    @property
    def folder(self) -> DataFolder:
        return DataFolder(Path(self.data_dir))

    @property
    def policy_path(self) -> Path:
        return self.policy or self.folder.policy

    @property
    def spark_stage(self) -> Path:
        return self.spark_stage_dir or self.folder.spark_stage


# Variable name -> its default as documented (the README's settings table).
VARIABLES = {spec.metadata["env"]: spec.metadata["documented"] for spec in fields(Settings)}


@functools.cache
def current() -> Settings:
    """This process's settings, read once: the code location's partitions and its resources
    both come from this one object, so one run never sees two policy files."""
    return Settings.from_env()


def use_this_python_for_spark() -> None:
    """Spark's Python workers must be this environment's interpreter (design §5); an explicit
    PYSPARK_PYTHON wins. Set before Dagster starts the Spark session."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
