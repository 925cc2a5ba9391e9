"""The privacy core: bounding, mechanisms (OpenDP), accounting and the ledger. No Dagster.

Library entry points (pandas in, pandas out; the same code the assets call):
`release_cohort_sizes(assignments, policy)` and `release_cohort_metrics(profiles, plan, policy)`,
documented in `cohort_pipeline.privacy.release`.
"""

__all__ = ["release_cohort_metrics", "release_cohort_sizes"]


def __getattr__(name: str):
    # Lazy: policy.py imports privacy.accounting, and release.py imports policy.py.
    if name in __all__:
        from cohort_pipeline.privacy import release

        return getattr(release, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
