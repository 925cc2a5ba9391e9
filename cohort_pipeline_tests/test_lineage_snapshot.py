"""The asset graph's specs, held in lineage_snapshot.json so any lineage change (a new dep, a
moved group, a dropped blocking check, another automation condition) shows up in review.

After an intended change, regenerate the file and commit it with the change:
    COHORT_PIPELINE_UPDATE_SNAPSHOT=1 .venv/bin/pytest -k lineage_matches_snapshot
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cohort_pipeline.definitions import defs

SNAPSHOT = Path(__file__).with_name("lineage_snapshot.json")
UPDATE_ENV = "COHORT_PIPELINE_UPDATE_SNAPSHOT"


def lineage() -> dict:
    """Every asset spec and its checks, in a stable, JSON-friendly form."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for spec in sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string()):
        condition = spec.automation_condition
        checks = sorted(graph.get(spec.key).check_keys, key=lambda k: k.name)
        assets[spec.key.to_user_string()] = {
            "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
            "group": spec.group_name,
            "owners": sorted(spec.owners),
            "kinds": sorted(spec.kinds),
            # kinds are listed above; their dagster/kind/* tags would only repeat them
            "tags": {
                k: v for k, v in sorted(spec.tags.items()) if not k.startswith("dagster/kind/")
            },
            "code_version": spec.code_version,
            "automation_condition": condition.get_label() or condition.name if condition else None,
            "partitioned": spec.partitions_def is not None,
            "freshness_policy": repr(spec.freshness_policy) if spec.freshness_policy else None,
            "checks": {
                key.name: {"blocking": graph.get_check_spec(key).blocking} for key in checks
            },
        }
    return assets


def test_lineage_matches_snapshot():
    current = lineage()
    if os.environ.get(UPDATE_ENV):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, (
        f"the asset graph changed; review the difference, then regenerate {SNAPSHOT.name} with "
        f"{UPDATE_ENV}=1"
    )


def test_snapshot_holds_the_release_guards():
    # The snapshot itself must hold what reviewers rely on, so regenerating it cannot
    # silently drop a blocking check or the automation guard.
    assets = json.loads(SNAPSHOT.read_text())
    assert assets["privacy_budget_ledger"]["checks"]["budget_within_limit"] == {"blocking": True}
    assert assets["cohort_sizes"]["checks"]["min_cohort_size"] == {"blocking": True}
    for name in (
        "cohort_sizes",
        "cohort_metrics",
        "cohort_category_affinity",
        "ranking_weights",
        "cohort_recommendations",
    ):
        assert assets[name]["automation_condition"] == "eager_after_blocking_checks", name
