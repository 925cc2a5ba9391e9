"""Imported once by release_procs' forkserver: the first ephemeral Dagster instance of a
process costs ~1.7 s of CPU (storage modules, schema), any later one ~0.2 s. Made here, so
each release process (a fork of the server) makes its own fresh instance at the later cost."""

from dagster import DagsterInstance

with DagsterInstance.ephemeral():
    pass
