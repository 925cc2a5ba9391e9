"""The privacy core: bounding, mechanisms (OpenDP), accounting and the ledger. No Dagster.

Library entry points (pandas in, pandas out; the same code the assets call):
`release_cohort_sizes(totals, policy)` and `release_cohort_metrics(totals, plan, policy)`,
documented in `cohort_pipeline.privacy.release` (totals: per cohort key, or per user with
users = 1).
"""

__all__ = ["release_cohort_metrics", "release_cohort_sizes"]


def __getattr__(name: str):
    # Lazy: policy.py imports privacy.accounting, and release.py imports policy.py.
    if name in __all__:
        from cohort_pipeline.privacy import release

        return getattr(release, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
