"""The release tables as Dagster shows them: columns with their types and descriptions,
the warehouse table name, column lineage back to the private assets, and row counts.

One place for all of it: the asset specs get the schema at definition time (definitions.py,
so it shows before a first materialization) and every release asset adds
`release_table_metadata(table, frame)` to its materialization. Row counts of release tables
are public (one row per released key of the public key set), unlike private ones.
"""

from __future__ import annotations

import pandas as pd
from dagster import (
    AssetKey,
    MetadataValue,
    TableColumn,
    TableColumnDep,
    TableColumnLineage,
    TableRecord,
    TableSchema,
)

from cohort_pipeline.logic.display import (
    constant_text,
    interval_95,
    round_half_width,
    round_to_accuracy,
)
from cohort_pipeline.storage.warehouse import (
    COHORT_CATEGORY_AFFINITY,
    COHORT_METRICS,
    COHORT_RECOMMENDATIONS,
    COHORT_SIMILARITY,
    COHORT_SIZES,
    EXPERIMENT_RESULTS,
    ITEM_POPULARITY,
    RANKING_WEIGHTS,
)

CATALOG = "warehouse"  # DuckDB names a file's catalog after the file: warehouse.duckdb

# Every column of a release table, once: (type shown in the UI, description).
COLUMNS: dict[str, tuple[str, str]] = {
    "release_date": ("date", "The release date (the partition key); the window ends on it."),
    "cohort_key": ("string", "Cohort: its dimensions' labels, |-joined (public key set)."),
    "other_cohort_key": ("string", "The cohort compared with cohort_key."),
    "engagement": ("string", "Engagement band of the cohort, or * when coarsened away."),
    "recency": ("string", "Purchase-recency band of the cohort, or * when coarsened away."),
    "device": ("string", "Device group of the cohort, or * when coarsened away."),
    "members": ("string", "The full cohorts merged into this one (;-separated)."),
    "noisy_users": ("float", "DP count of users in the cohort (Laplace noise)."),
    "users": ("float", "DP users of the cohort (from cohort_sizes, no new spend)."),
    "mean_session_duration_s": ("float", "DP mean session duration, seconds."),
    "conversion_rate": ("float", "DP share of users who purchased in the outcome days."),
    "sessions_per_user": ("float", "DP mean sessions per user (clamped per user)."),
    "category": ("string", "Catalog category (public)."),
    "noisy_sum": ("float", "DP sum of users' bounded category engagement."),
    "affinity": ("float", "noisy_sum per released user of the cohort (post-processing)."),
    "share": ("float", "The cohort's share of engagement in this category (post-processing)."),
    "similarity": ("float", "Cosine similarity of the two cohorts' category shares."),
    "weight": ("float", "Ranking weight of the category for the cohort."),
    "boost": ("float", "weight relative to the global profile (1 = no boost)."),
    "shrinkage": ("float", "How far the cohort is shrunk toward the global profile (0..1)."),
    "previous_weight": ("float", "The weight of the previous release (change limit)."),
    "rank": ("int", "Position in the cohort's top-N list (1 = first)."),
    "item_id": ("string", "Catalog item (public)."),
    "score": ("float", "Cohort category weight x DP item popularity."),
    "noisy_popularity": ("float", "DP popularity of the item (Gaussian noise)."),
    "category_share": ("float", "The item's share of its category's DP popularity."),
    "arm": ("string", "Experiment arm: cohort, popularity, or the uplift between them."),
    "metric": ("string", "Readout: HR@10, NDCG@10, Recall@20, coverage, uplift, ..."),
    "value": ("float", "The DP readout (post-processing of noisy sums)."),
    "ci_low": ("float", "Lower end of the readout's 95% interval."),
    "ci_high": ("float", "Upper end of the readout's 95% interval."),
    "noisy_evaluated_users": ("float", "DP count of users evaluated."),
    "noise_std": ("float", "Standard deviation of the Gaussian noise on each sum."),
    "ranking_release": ("date", "The release whose ranking is evaluated (7 days earlier)."),
    "accuracy_95": ("float", "95% half-width of the noisy value beside it (from the noise)."),
    "noise_scale": ("float", "Scale of the noise drawn (Laplace b or Gaussian sigma)."),
    "policy_hash": ("string", "Hash of the policy the release was made under."),
    "reservation_id": (
        "string",
        "The random id of the ledger reservation this release was drawn under.",
    ),
    "ledger_seq": ("int", "The privacy ledger reservation that paid for this release."),
}
for _metric in ("mean_session_duration_s", "conversion_rate", "sessions_per_user"):
    COLUMNS[f"{_metric}_accuracy_95"] = ("float", f"95% half-width of {_metric}.")

STAMP = ("policy_hash", "reservation_id", "ledger_seq")  # write_release adds these
# Stands for one column per cohort dimension of the policy, in its order (cohorts.dimensions).
DIMENSIONS = "<dimensions>"
DEFAULT_DIMENSIONS = ("engagement", "recency", "device")  # data/policy.yaml's

# Each release table's columns, in the order they are stored.
TABLES: dict[str, tuple[str, ...]] = {
    COHORT_SIZES: (
        "release_date", "cohort_key", DIMENSIONS, "members",
        "noisy_users", "noise_scale", "accuracy_95", *STAMP,
    ),
    COHORT_METRICS: (
        "release_date", "cohort_key", "users",
        "mean_session_duration_s", "mean_session_duration_s_accuracy_95",
        "conversion_rate", "conversion_rate_accuracy_95",
        "sessions_per_user", "sessions_per_user_accuracy_95", "noise_scale", *STAMP,
    ),
    COHORT_CATEGORY_AFFINITY: (
        "release_date", "cohort_key", "category", "noisy_sum", "affinity", "share",
        "accuracy_95", "noise_scale", *STAMP,
    ),
    COHORT_SIMILARITY: ("release_date", "cohort_key", "other_cohort_key", "similarity"),
    RANKING_WEIGHTS: (
        "release_date", "cohort_key", "category", "weight", "boost", "shrinkage",
        "previous_weight", "policy_hash",
    ),
    COHORT_RECOMMENDATIONS: (
        "release_date", "cohort_key", "rank", "item_id", "category", "score", *STAMP,
    ),
    ITEM_POPULARITY: (
        "release_date", "item_id", "category", "noisy_popularity", "category_share", *STAMP,
    ),
    EXPERIMENT_RESULTS: (
        "release_date", "arm", "metric", "cohort_key", "value", "ci_low", "ci_high",
        "noisy_evaluated_users", "noise_std", "ranking_release", *STAMP,
    ),
}  # fmt: skip

# The release table each asset writes.
ASSET_TABLES = {
    "cohort_sizes": COHORT_SIZES,
    "cohort_metrics": COHORT_METRICS,
    "cohort_category_affinity": COHORT_CATEGORY_AFFINITY,
    "cohort_similarity": COHORT_SIMILARITY,
    "ranking_weights": RANKING_WEIGHTS,
    "cohort_recommendations": COHORT_RECOMMENDATIONS,
    "experiment_report": EXPERIMENT_RESULTS,
    "item_popularity": ITEM_POPULARITY,
}

# Where released columns come from: (asset, column) of the private assets (and the releases
# they post-process). Noise scales, accuracies and stamps come from the policy and the ledger.
_PROFILE = ("user_profiles", "cohort_key")
LINEAGE: dict[str, dict[str, list[tuple[str, str]]]] = {
    COHORT_SIZES: {
        "noisy_users": [("cohort_assignments", "user_id"), ("cohort_assignments", "cohort_key")],
    },
    COHORT_METRICS: {
        "users": [("cohort_sizes", "noisy_users")],
        "mean_session_duration_s": [("user_profiles", "mean_duration_s"), _PROFILE],
        "conversion_rate": [("user_profiles", "converted"), _PROFILE],
        "sessions_per_user": [("user_profiles", "sessions"), _PROFILE],
    },
    COHORT_CATEGORY_AFFINITY: {
        column: [("raw_events", "item_id"), ("raw_events", "event_type"), _PROFILE]
        for column in ("noisy_sum", "affinity", "share")
    },
    COHORT_SIMILARITY: {"similarity": [("cohort_category_affinity", "share")]},
    RANKING_WEIGHTS: {
        column: [("cohort_category_affinity", "share"), ("cohort_sizes", "noisy_users")]
        for column in ("weight", "boost", "shrinkage")
    },
    COHORT_RECOMMENDATIONS: {
        "score": [("ranking_weights", "weight"), ("raw_events", "item_id")],
        "rank": [("ranking_weights", "weight"), ("raw_events", "item_id")],
    },
    EXPERIMENT_RESULTS: {
        column: [
            ("raw_events", "item_id"),
            ("raw_events", "event_time"),
            ("cohort_assignments", "cohort_key"),
            ("cohort_recommendations", "item_id"),
        ]
        for column in ("value", "ci_low", "ci_high", "noisy_evaluated_users")
    },
}


def column(name: str, dtype: str | None = None) -> TableColumn:
    """A column as the UI shows it: its declared type and description, if it has one."""
    declared, description = COLUMNS.get(name, (dtype or "string", None))
    return TableColumn(name, declared, description=description)


def table_columns(table: str, dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS) -> list[str]:
    """`table`'s columns in stored order, a cohort table's dimension columns being the
    policy's `dimensions`."""
    if table not in TABLES:
        raise KeyError(f"{table} is not a release table: expected one of {sorted(TABLES)}")
    return [c for name in TABLES[table] for c in (dimensions if name == DIMENSIONS else (name,))]


def table_schema(table: str, dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS) -> TableSchema:
    return TableSchema(
        columns=[
            column(name)
            if name in COLUMNS or name not in dimensions
            else TableColumn(
                name,
                "string",
                description=f"The cohort's {name} label, or *"
                " when coarsened away (policy cohorts.dimensions).",
            )
            for name in table_columns(table, dimensions)
        ]
    )


def column_lineage(table: str) -> TableColumnLineage:
    return TableColumnLineage(
        deps_by_column={
            col: [TableColumnDep(asset_key=AssetKey(asset), column_name=c) for asset, c in deps]
            for col, deps in LINEAGE.get(table, {}).items()
        }
    )


def release_table_spec_metadata(
    table: str, dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
) -> dict:
    """Definition-time metadata of an asset that writes `table`: shown before it ever runs
    (with the default policy's dimensions; each materialization shows the run's own)."""
    return {
        "dagster/table_name": f"{CATALOG}.{table}",
        "dagster/column_schema": table_schema(table, dimensions),
        "dagster/column_lineage": column_lineage(table),
    }


def release_table_metadata(
    table: str, frame: pd.DataFrame, dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
) -> dict:
    """Materialization metadata of a release table: name, schema, lineage and row count
    (public: one row per released key). `frame` is what was written for the release date;
    `dimensions` are the run's policy's cohort dimensions."""
    declared = table_columns(table, dimensions)
    unknown = [c for c in frame.columns if c != "release_date" and c not in declared]
    if unknown:
        raise KeyError(f"{table}: columns {unknown} are not declared in defs/tables.py")
    return {**release_table_spec_metadata(table, dimensions), "dagster/row_count": len(frame)}


# -- previews of released rows ------------------------------------------------------------


def _kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def accuracy_columns(frame: pd.DataFrame) -> dict[str, str]:
    """Value column -> the column holding its 95% half-width: `<c>_accuracy_95` belongs to
    `c`, a bare `accuracy_95` to the numeric column nearest on its left."""
    found = {}
    columns = list(frame.columns)
    for i, name in enumerate(columns):
        if name.endswith("_accuracy_95") and name.removesuffix("_accuracy_95") in frame:
            found[name.removesuffix("_accuracy_95")] = name
        elif name == "accuracy_95":
            left = [
                c
                for c in columns[:i]
                if _kind(frame[c]) == "float" and not c.endswith("accuracy_95")
            ]
            if left:
                found[left[-1]] = name
    return found


def _shown(number: float) -> float | int:
    """A rounded number as stored in Dagster: 1364 rather than 1364.0, so the stored text
    claims no more precision than the rounding kept."""
    return int(number) if number.is_integer() else number


def _cell(value, kind: str, half_width=None, significant: int = 3):
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if kind == "float":
        return _shown(round_to_accuracy(float(value), half_width, significant))
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)


def preview_table(frame: pd.DataFrame, significant: int = 3) -> MetadataValue:
    """Rows as a Dagster table (sortable, no Markdown, so `|` in cohort keys is just text).
    Each noisy value is rounded to its 95% half-width, the half-width to two significant
    digits, other numbers to `significant` significant digits."""
    kinds = {name: _kind(frame[name]) for name in frame.columns}
    accuracy = accuracy_columns(frame)
    half_widths = set(accuracy.values())
    records = []
    for row in frame.to_dict("records"):
        cells = {}
        for name, value in row.items():
            if name in half_widths and kinds[name] == "float" and not pd.isna(value):
                cells[name] = _shown(round_half_width(float(value)))
            else:
                half = row[accuracy[name]] if name in accuracy else None
                cells[name] = _cell(value, kinds[name], half, significant)
        records.append(TableRecord(cells))
    schema = TableSchema(columns=[column(str(name), kinds[name]) for name in frame.columns])
    return MetadataValue.table(records=records, schema=schema)


def noisy_metadata(label: str, value: float, half_width: float) -> dict:
    """A noisy value as metadata: the number rounded to its accuracy (plotted across
    releases) and, beside it, the text with its 95% interval, so that movement between
    releases within the noise reads as such."""
    rounded = _shown(round_to_accuracy(float(value), float(half_width)))
    return {
        label: MetadataValue.int(rounded)
        if isinstance(rounded, int)
        else MetadataValue.float(rounded),
        f"{label} (95%)": MetadataValue.text(interval_95(float(value), float(half_width))),
    }


def constants_metadata(**constants) -> dict:
    """Policy constants (cap, delta, k, limits) as text: shown once, never plotted."""
    return {name: MetadataValue.text(constant_text(value)) for name, value in constants.items()}
