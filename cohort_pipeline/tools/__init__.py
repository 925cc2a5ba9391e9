"""Operator tools: the CLI, the sample-data generator, the importer and the privacy audits."""
