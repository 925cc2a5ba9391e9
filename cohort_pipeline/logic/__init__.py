"""Pure logic outside Dagster and the privacy core: ranking, experiments, risk, reports, alerts."""
