"""The privacy core: bounding, mechanisms (OpenDP), the measurement registry, accounting and
the ledger. No Dagster.

Library entry points (pandas in, pandas out; the same code the assets call): the release
functions of `cohort_pipeline.privacy.release`, each given its measurement's mechanism from
`cohort_pipeline.privacy.measurements.mechanisms(policy)`, or `measurements.release_measurement`
(totals: per cohort key, or per user with users = 1).
"""
