"""The privacy core: bounding, mechanisms (OpenDP), accounting and the ledger. No Dagster."""
