# The one way to do things here; .ci/run calls the same targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
.DEFAULT_GOAL := test

.PHONY: install lock test test-unit lint typecheck bench diagrams run compile-charts clean screenshot

# Everything in one process: API, scheduler, Koban sandbox with demo stock, private Redis.
run: $(STAMP)
	@[ -n "$${REDIS_URL:-}" ] || .ci/ensure-redis
	$(BIN)/koban-options run

# The exact versions of requirements.lock (the ones the benchmarks were measured with), then
# the project itself without resolving anything again.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Re-pin requirements.lock from pyproject.toml (every extra `install` uses), for CPython 3.11
# on Linux x86_64; versions already pinned stay unless pyproject.toml rules them out.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
lock:
	test -x $(BIN)/uv || $(BIN)/pip install -q 'uv>=0.9'
	$(BIN)/uv pip compile -q pyproject.toml --extra dev $(LOCK_TARGET) -o requirements.lock

test: $(STAMP)
	.ci/ensure-redis
	.ci/ensure-chromium
	$(BIN)/pytest -q

# The operator page's screenshot in docs/img, made by its browser test.
screenshot: $(STAMP)
	.ci/ensure-redis
	.ci/ensure-chromium
	KOBAN_OPTIONS_SCREENSHOT=docs/img/operator-page.png $(BIN)/pytest -q -p no:cacheprovider \
		tests/integration/test_ui_browser.py -k arrive
# The domain and pure rules alone: no redis-server, no network.
test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

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
	$(BIN)/python -m bench.peers
	$(BIN)/python -m bench.leads
	$(BIN)/python -m bench.http
	$(BIN)/python -m bench.ui
	$(BIN)/python -m bench.delivery
	$(BIN)/python -m bench.instructions

diagrams: $(STAMP)
	$(BIN)/python -m service.entrypoints.diagram docs
	$(BIN)/python -m service.entrypoints.ui.chart docs/lot-chart.svg

compile-charts: $(STAMP)
	$(BIN)/python -m statecharts.compile > statecharts/compiled.py.new && mv statecharts/compiled.py.new statecharts/compiled.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var
