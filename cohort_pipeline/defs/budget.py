"""Group privacy (release zone): the budget as it stands now, one unpartitioned asset that
refreshes after every ledger change, so a reviewer reads the enforced figure in one place
whatever date was released last (backfills included)."""

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from cohort_pipeline.defs.common import RELEASE, Group, Owner, asset_args, table_preview
from cohort_pipeline.defs.privacy import privacy_budget_ledger
from cohort_pipeline.logic.display import constant_text
from cohort_pipeline.privacy.release import budget_cap
from cohort_pipeline.resources import LedgerResource, PipelineResource

# Any new ledger row (a reservation of any release date) makes this view stale. Waits for
# runs that are still reserving; a run that refreshed it itself is not followed by another.
AFTER_LEDGER_CHANGE = (
    (
        AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()
    ).since_last_handled()
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.in_progress()
).with_label("after_every_ledger_change")

# Ledger.summary keys that are figures of the budget, in the order a reviewer reads them.
FIGURES = ("epsilon_spent", "epsilon_remaining", "horizon_epsilon", "yearly_epsilon")


def budget_status_metadata(summary: dict) -> dict:
    """What the view shows of a Ledger.summary: the enforced figures as numbers (plotted
    across refreshes), the policy's constants once as text, the releases on record."""
    figures = {k: float(summary[k]) for k in FIGURES if summary.get(k) is not None}
    cap = summary["epsilon_cap"]
    left = (
        f"epsilon {summary['epsilon_remaining']:.4f} left of {constant_text(cap)} (spent "
        f"{summary['epsilon_spent']:.4f}; worst {summary['window_days']}-day window containing "
        f"{summary['as_of'] or 'no release yet'})"
    )
    if summary.get("horizon_epsilon") is not None:
        left += (
            f"; over {summary.get('horizon_days')} days a person's loss is at most epsilon "
            f"{summary['horizon_epsilon']:.4f}"
        )
    releases = pd.DataFrame(summary["releases"])
    return {
        "budget_left": MetadataValue.text(left),
        **figures,
        "epsilon_cap": MetadataValue.text(constant_text(cap)),
        "window_days": MetadataValue.text(constant_text(summary["window_days"])),
        "horizon_days": MetadataValue.text(constant_text(summary.get("horizon_days", "n/a"))),
        "composition": MetadataValue.text(
            f"{summary['composition']} at delta {summary['delta']:g}"
        ),
        "latest_release": MetadataValue.text(summary["as_of"] or "none"),
        "releases_on_record": len(releases),
        "ledger_verified": bool(summary["verified"]),
        "releases": table_preview(
            releases.drop(columns=["data_version"], errors="ignore")
            if not releases.empty
            else pd.DataFrame({"release_date": [], "epsilon": []}),
            6,
        ),
    }


@asset(
    **asset_args(Group.PRIVACY, Owner.PRIVACY, RELEASE, {"duckdb"}, pool="ledger", daily=False),
    deps=[privacy_budget_ledger],
    automation_condition=AFTER_LEDGER_CHANGE,
    description="The privacy budget now: epsilon spent and left in the window the cap is "
    "enforced on (the same figures as `cohort-pipeline ledger show`), the horizon's "
    "per-person loss, and every release on record. Refreshed after every "
    "privacy_budget_ledger materialization. See docs/privacy_audit.md.",
)
def privacy_budget_status(
    context: AssetExecutionContext, pipeline: PipelineResource, ledger: LedgerResource
):
    summary = ledger.ledger().summary(budget_cap(pipeline.policy()))
    context.log.info(f"budget as of {summary['as_of']}: {summary['epsilon_remaining']:.4f} left")
    return MaterializeResult(metadata=budget_status_metadata(summary))
