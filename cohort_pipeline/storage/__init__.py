"""Storage: raw events, opt-outs, private files and file locking (no Dagster)."""
