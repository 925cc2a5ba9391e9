# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := $(or $(COHORT_PIPELINE_DATA_DIR),data)
PORT ?= 3000
# The UI has no login (Dagster OSS): it listens on this machine only unless HOST says otherwise.
HOST ?= 127.0.0.1
export DAGSTER_HOME := $(abspath $(DATA))/dagster_home

.PHONY: install data release run test lint format clean

$(BIN)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,spark]'
	touch $@

install: $(BIN)/.installed

# Sample data: 20k users x 30 days ending yesterday (UTC), deterministic for the seed. The
# folder will hold raw events, the warehouse and opt-outs: only its owner may enter it.
$(DATA)/events: | install
	mkdir -p $(DATA) && chmod 700 $(DATA)
	$(BIN)/cohort-pipeline --data-dir $(DATA) generate --users 20000 --days 30 --seed 7

data: $(DATA)/events

# Another data dir starts from the repo's default policy (edit it there before releasing).
$(DATA)/policy.yaml:
	mkdir -p $(DATA)
	cp data/policy.yaml $@
	@echo "copied the default policy to $@"

$(DAGSTER_HOME)/dagster.yaml: dagster_instance.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster_instance.yaml $@

# Release dates the events allow: the partitions start at the first date whose whole lookback
# window is on file (or the policy's release.partitions_start, if later), so the UI offers no
# empty dates. Both the release and the UI load the definitions with the same start.
CALENDAR := $(BIN)/cohort-pipeline --data-dir $(DATA)
START = start=$$($(CALENDAR) first-date) && export COHORT_PIPELINE_PARTITIONS_START=$$start

# Dagster's CLI points at `dg`, which this project does not install: keep the notice out.
QUIET := PYTHONWARNINGS='ignore:Function `job_execute_command` is superseded,ignore:Function `dev_command` is superseded'

# The latest day's release as a run of the daily_release job, stored in DAGSTER_HOME so the UI
# lists it under Runs and on the job's page (the repository tag is the one the UI gives the
# runs it launches from the `cohort_pipeline` location). Exits non-zero, naming the failed
# check, when a blocking check stops it.
release: data $(DATA)/policy.yaml $(DAGSTER_HOME)/dagster.yaml
	$(START) && day=$$($(CALENDAR) latest-date) && $(QUIET) \
	$(BIN)/dagster job execute -m cohort_pipeline.definitions -j daily_release --tags \
	  "{\"dagster/partition\": \"$$day\", \".dagster/repository\": \"__repository__@cohort_pipeline\"}"

run: release
	$(START) && $(QUIET) $(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

test: install
	$(BIN)/ruff format --check cohort_pipeline cohort_pipeline_tests benchmarks
	$(BIN)/ruff check cohort_pipeline cohort_pipeline_tests benchmarks
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff format cohort_pipeline cohort_pipeline_tests benchmarks
	$(BIN)/ruff check --fix cohort_pipeline cohort_pipeline_tests benchmarks

clean:
	rm -rf $(DATA)/events $(DATA)/catalog.csv $(DATA)/*.duckdb $(DATA)/exports $(DAGSTER_HOME)
