"""Thin Dagster wrappers, one module per group; checks sit beside their assets."""
