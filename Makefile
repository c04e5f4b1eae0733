# Salvo: `make run` to try it, `make test` to check it. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The machine's Python 3.11 (CI images call it python3).
PYTHON311 := $(shell command -v python3.11 || command -v python3)
STAMP := $(VENV)/.installed-stamp
SERVICES := scripts/services.sh
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests keep their own var/ corner (SQLite test database, broker folder) so that they never
# touch the data or the queue of a `make run` on the same checkout.
TEST_VAR_DIR ?= $(CURDIR)/var/test
# Where `make run` keeps its database, broker folder and logs (settings' default too).
RUN_VAR_DIR ?= $(CURDIR)/var
CHROMIUM := /usr/bin/chromium

.PHONY: help venv run soak test test-suite lint fmt chromium services services-stop services-env bench clean

help:
	@echo "make run            install, migrate, load demo data, start web + worker + scheduler"
	@echo "make test           ruff, mypy and the test suite (embedded default)"
	@echo "make soak           the embedded stack under load for SOAK_SECONDS (180), then checks"
	@echo "make services       start a throwaway PostgreSQL 15 + Redis and print their env"
	@echo "make services-stop  stop them"
	@echo "make bench          benchmarks against make services"
	@echo "make lint / fmt     check / apply formatting and lint fixes"

# Reinstall only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON311) -m venv $(VENV) || { \
		[ "$$(id -u)" = 0 ] && rm -rf $(VENV) && echo "installing python3-venv with apt-get" && \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON311) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# supervisord runs web, worker and beat (scripts/supervisord.conf): a program that dies is
# started again while the others go on; Ctrl-C stops all three gracefully.
run: venv
	SALVO_VAR_DIR=$(RUN_VAR_DIR) $(PY) manage.py migrate --noinput
	SALVO_VAR_DIR=$(RUN_VAR_DIR) $(PY) manage.py load_demo --admin-url http://$(HOST):$(PORT)/admin/
	@echo
	@echo "  Salvo admin:  http://$(HOST):$(PORT)/admin/   (login printed above)"
	@echo "  REST API:     http://$(HOST):$(PORT)/api/   docs: http://$(HOST):$(PORT)/api/docs/"
	@echo "  Ctrl-C stops the web server, the worker and the scheduler."
	@echo
	SALVO_VAR_DIR=$(RUN_VAR_DIR) SALVO_HOST=$(HOST) SALVO_PORT=$(PORT) \
		exec $(BIN)/supervisord -c scripts/supervisord.conf

# The stack of `make run` under a fast scheduler while campaigns activate through the API,
# for SOAK_SECONDS, then its checks (scripts/soak.py); its files go to var/soak.
SOAK_SECONDS ?= 180
soak: venv
	$(PY) scripts/soak.py --seconds $(SOAK_SECONDS)

# Browser tests drive Debian's Chromium; a clean CI machine (root) installs it.
chromium:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium with apt-get"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy .

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint test-suite

# The tests alone, on whichever profile the environment selects (.ci/run uses it again with
# DATABASE_URL and CELERY_BROKER_URL from `make services`).
test-suite: venv chromium
	SALVO_VAR_DIR=$(TEST_VAR_DIR) $(BIN)/pytest --create-db $(PYTEST_ARGS)

services:
	@$(SERVICES) start

services-stop:
	@$(SERVICES) stop

services-env:
	@$(SERVICES) env

# Against `make services` (started if needed); BENCH_PROFILES=10000 for a quick look.
BENCH_PROFILES ?= 1000000
bench: venv
	@$(SERVICES) start >/dev/null
	eval "$$($(SERVICES) env)" && $(PY) manage.py migrate --noinput \
		&& $(PY) manage.py bench_audience --profiles $(BENCH_PROFILES) \
		&& if $(PY) manage.py help bench_delivery >/dev/null 2>&1; then \
			$(PY) manage.py bench_delivery --profiles $(BENCH_PROFILES) --channels email,sms; \
		else echo "bench_delivery: not available yet"; fi

clean:
	rm -rf $(TEST_VAR_DIR) .pytest_cache .mypy_cache .ruff_cache
