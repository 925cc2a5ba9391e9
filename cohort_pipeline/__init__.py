"""cohort_pipeline: differentially private cohort metrics and ranking weights, as a Dagster code location."""
