"""Released figures as the UI shows them: rounded to their accuracy, tables typed so cohort
keys holding `|` stay in their column, release tables described in one place."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from dagster import AssetKey

from cohort_pipeline.defs.conventions import markdown_safe
from cohort_pipeline.defs.tables import (
    TABLES,
    accuracy_columns,
    constants_metadata,
    noisy_metadata,
    preview_table,
    release_table_metadata,
    release_table_spec_metadata,
    table_columns,
)
from cohort_pipeline.logic.display import (
    constant_text,
    interval_95,
    round_to_accuracy,
    with_accuracy,
)


@pytest.mark.parametrize(
    "value, half, text",
    [
        (362.127654, 44.3, "362 ± 44"),
        (362.127654, 4.43, "362.1 ± 4.4"),
        (0.0123456, 0.00456, "0.0123 ± 0.0046"),
        (12345.6, 987.0, "12346 ± 987"),  # units kept: never rounded to tens
        (-0.0004, 0.03, "0.000 ± 0.030"),
        (5.5, 0.0, "5.5"),
        (5.5, math.nan, "5.5"),
    ],
)
def test_with_accuracy(value, half, text):
    assert with_accuracy(value, half) == text


def test_rounded_value_and_interval():
    assert round_to_accuracy(362.127654, 44.3) == 362.0
    assert round_to_accuracy(0.0123456, 0.00456) == 0.0123
    assert round_to_accuracy(1 / 3, math.nan) == 0.333333
    assert round_to_accuracy(1963.26, math.nan, significant=3) == 1963.0  # units kept
    assert interval_95(362.127654, 44.3) == "362 ± 44 (95%: 318 to 406)"


def test_constants_read_as_text():
    assert constant_text(8.0) == "8"
    assert constant_text(1e-6) == "1e-06"
    assert constant_text(200) == "200"


def test_preview_keeps_cohort_keys_in_their_column():
    frame = pd.DataFrame(
        {
            "cohort_key": ["low|recent|mobile", "high|none|desktop"],
            "members": ["low|recent|mobile", "high|none|desktop;high|none|mobile"],
            "noisy_users": [362.127654, 1234.5678],
            "accuracy_95": [44.3, 44.3],
            "rank": [1, 2],
        }
    )
    table = preview_table(frame).value
    assert [c.name for c in table.schema.columns] == list(frame.columns)
    types = {c.name: c.type for c in table.schema.columns}
    assert types == {
        "cohort_key": "string",
        "members": "string",
        "noisy_users": "float",
        "accuracy_95": "float",
        "rank": "int",
    }
    first, second = (r.data for r in table.records)
    assert first == {
        "cohort_key": "low|recent|mobile",
        "members": "low|recent|mobile",
        "noisy_users": 362.0,
        "accuracy_95": 44.0,
        "rank": 1,
    }
    assert second["noisy_users"] == 1235
    assert type(second["noisy_users"]) is int  # stored as "1235", not "1235.0"
    # described columns carry their description into the UI
    assert (
        "DP count" in next(c for c in table.schema.columns if c.name == "noisy_users").description
    )


def test_accuracy_columns_pair_values_with_their_half_widths():
    frame = pd.DataFrame(
        columns=[
            "cohort_key",
            "conversion_rate",
            "conversion_rate_accuracy_95",
            "share",
            "accuracy_95",
        ]
    ).astype(
        {
            "conversion_rate": float,
            "conversion_rate_accuracy_95": float,
            "share": float,
            "accuracy_95": float,
        }
    )
    assert accuracy_columns(frame) == {
        "conversion_rate": "conversion_rate_accuracy_95",
        "share": "accuracy_95",
    }


def test_release_table_metadata():
    frame = pd.DataFrame({c: [] for c in table_columns("release.cohort_sizes")}).head(0)
    frame = pd.concat([frame, frame]).reindex(range(3))
    meta = release_table_metadata("release.cohort_sizes", frame)
    assert meta["dagster/row_count"] == 3
    assert meta["dagster/table_name"] == "warehouse.release.cohort_sizes"
    schema = meta["dagster/column_schema"]
    assert all(c.description for c in schema.columns), "every release column is described"
    deps = meta["dagster/column_lineage"].deps_by_column["noisy_users"]
    assert {d.asset_key for d in deps} == {AssetKey("cohort_assignments")}
    with pytest.raises(KeyError, match="not declared"):
        release_table_metadata("release.cohort_sizes", frame.assign(user_id="u1"))
    with pytest.raises(KeyError, match="not a release table"):
        release_table_spec_metadata("private.user_profiles")


def test_every_release_column_is_described():
    for table in TABLES:
        schema = release_table_spec_metadata(table)["dagster/column_schema"]
        assert [c.name for c in schema.columns] == table_columns(table), table
        assert all(c.description for c in schema.columns), table


def test_a_cohort_table_has_a_described_column_per_policy_dimension():
    dims = ("engagement", "tenure", "device")
    columns = table_columns("release.cohort_sizes", dims)
    assert columns[columns.index("cohort_key") + 1 :][:3] == list(dims)
    frame = pd.DataFrame({c: ["x"] for c in columns})
    meta = release_table_metadata("release.cohort_sizes", frame, dims)
    described = {c.name: c.description for c in meta["dagster/column_schema"].columns}
    assert "tenure" in described["tenure"] and "recency" not in described
    with pytest.raises(KeyError, match="recency"):
        release_table_metadata("release.cohort_sizes", frame.assign(recency="x"), dims)


def test_noisy_values_and_constants_as_metadata():
    meta = noisy_metadata("noisy_users:low|recent|mobile", 362.127654, 44.3)
    assert meta["noisy_users:low|recent|mobile"].value == 362
    assert type(meta["noisy_users:low|recent|mobile"].value) is int  # stored as "362"
    assert meta["noisy_users:low|recent|mobile (95%)"].value == "362 ± 44 (95%: 318 to 406)"
    consts = constants_metadata(epsilon_cap=8.0, delta=1e-6, min_size=200)
    assert {k: v.value for k, v in consts.items()} == {
        "epsilon_cap": "8",
        "delta": "1e-06",
        "min_size": "200",
    }


def test_descriptions_keep_placeholders_visible():
    assert (
        markdown_safe("Also written to exports/<date>/audit_report.md.")
        == "Also written to `exports/<date>/audit_report.md`."
    )
    assert markdown_safe("kept `exports/<date>/x.md` as is") == "kept `exports/<date>/x.md` as is"
