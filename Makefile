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

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# The latest day's release, stored in DAGSTER_HOME so the UI shows it and its checks.
release: data $(DATA)/policy.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster asset materialize -m cohort_pipeline.definitions --select '*' \
	  --partition $$($(BIN)/cohort-pipeline --data-dir $(DATA) latest-date)

run: release
	$(BIN)/dagster dev -w workspace.yaml -h $(HOST) -p $(PORT)

test: install
	$(BIN)/ruff format --check cohort_pipeline cohort_pipeline_tests benchmarks
	$(BIN)/ruff check cohort_pipeline cohort_pipeline_tests benchmarks
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff format cohort_pipeline cohort_pipeline_tests benchmarks
	$(BIN)/ruff check --fix cohort_pipeline cohort_pipeline_tests benchmarks

clean:
	rm -rf $(DATA)/events $(DATA)/catalog.csv $(DATA)/*.duckdb $(DATA)/exports $(DAGSTER_HOME)
