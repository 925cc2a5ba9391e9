"""Dagster's conventions, applied to every asset in one place (definitions.py calls
`with_conventions`): the release tables' schema, name and column lineage before any
materialization, a link to the docs of each group, and the daily release's freshness policy."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from dagster import AssetsDefinition, AssetSpec, FreshnessPolicy, MetadataValue

from cohort_pipeline.defs.common import RELEASE, Group
from cohort_pipeline.defs.tables import ASSET_TABLES, release_table_spec_metadata

DOCS = Path(__file__).resolve().parents[2] / "docs"
GROUP_DOCS = {
    Group.INGEST: "reliability.md",
    Group.COHORTS: "reliability.md",
    Group.PRIVACY: "privacy_audit.md",
    Group.METRICS: "privacy_audit.md",
    Group.RANKING: "experiments.md",
    Group.EXPERIMENTS: "experiments.md",
    Group.GOVERNANCE: "privacy_audit.md",
}

# The schedule releases day D at 03:00 UTC on D+1: a release asset whose latest
# materialization is older than that tick is stale from 04:00 UTC on.
DAILY_RELEASE_FRESHNESS = FreshnessPolicy.cron(
    deadline_cron="0 4 * * *", lower_bound_delta=timedelta(hours=1), timezone="UTC"
)


# A path such as exports/<date>/audit_report.md: Markdown would take <date> for an HTML tag.
PLACEHOLDER_PATH = re.compile(r"(?<![`\w./-])([\w./-]*<[\w ]+>[\w./-]*\w)")


def markdown_safe(description: str | None) -> str | None:
    """`description` with every path holding a <placeholder> set as code, so the UI shows it."""
    return description and PLACEHOLDER_PATH.sub(r"`\1`", description)


def conventions(spec: AssetSpec) -> AssetSpec:
    name = spec.key.to_user_string()
    metadata = dict(spec.metadata)
    if name in ASSET_TABLES:
        metadata.update(release_table_spec_metadata(ASSET_TABLES[name]))
    if spec.group_name in GROUP_DOCS:
        metadata["docs"] = MetadataValue.path(str(DOCS / GROUP_DOCS[spec.group_name]))
    daily_release = spec.partitions_def is not None and spec.tags.get("zone") == RELEASE
    return spec.replace_attributes(
        description=markdown_safe(spec.description),
        metadata=metadata,
        freshness_policy=DAILY_RELEASE_FRESHNESS if daily_release else spec.freshness_policy,
    )


def with_conventions(assets: Sequence[AssetsDefinition]) -> list[AssetsDefinition]:
    return [a.map_asset_specs(conventions) for a in assets]
