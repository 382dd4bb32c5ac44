# The one way to do things here; .ci/run calls the same targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
.DEFAULT_GOAL := test

.PHONY: install test lint typecheck bench diagrams run compile-charts clean

# Everything in one process: API, scheduler, Koban sandbox with demo stock, private Redis.
run: $(STAMP)
	@[ -n "$${REDIS_URL:-}" ] || .ci/ensure-redis
	$(BIN)/koban-options run

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	.ci/ensure-redis
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check service statecharts tests bench
	$(BIN)/ruff format --check service statecharts tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	.ci/ensure-redis
	.ci/ensure-wrk
	$(BIN)/python -m bench.sweep
	$(BIN)/python -m bench.ticks
	$(BIN)/python -m bench.webhooks
	$(BIN)/python -m bench.leads
	$(BIN)/python -m bench.http

diagrams: $(STAMP)
	$(BIN)/python -m service.entrypoints.diagram docs

compile-charts: $(STAMP)
	$(BIN)/python -m statecharts.compile > statecharts/compiled.py.new && mv statecharts/compiled.py.new statecharts/compiled.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
