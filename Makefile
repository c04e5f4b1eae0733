# Salvo: `make run` to try it, `make test` to check it. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The newest supported Python this machine has (requires-python in pyproject.toml), or the
# one PYTHON names: a version (PYTHON=3.12) or a command (PYTHON=/usr/bin/python3.11).
PYTHON ?=
TOOLCHAIN := scripts/toolchain.sh
PYTHON_FOUND := $(shell $(TOOLCHAIN) python $(PYTHON) 2>/dev/null)
PYTHON_VERSION := $(word 1,$(PYTHON_FOUND))
PYTHON_EXE := $(word 2,$(PYTHON_FOUND))
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# uv at the version uv.lock pins, in a virtualenv of its own (it installs the others).
UV_DIR := .tools/uv
UV := $(UV_DIR)/bin/uv
ENSURE_UV := $(TOOLCHAIN) uv $(PYTHON_EXE) $(UV_DIR) >/dev/null
# Installed again when the lock, pyproject.toml or the Python version changes.
STAMP := $(VENV)/.installed-python$(PYTHON_VERSION)
SERVICES := scripts/services.sh
HOST ?= 127.0.0.1
PORT ?= 8000
# Tests keep their own var/ corner (SQLite test database, broker folder) so that they never
# touch the data or the queue of a `make run` on the same checkout.
TEST_VAR_DIR ?= $(CURDIR)/var/test
# Where `make run` keeps its database, broker folder and logs (settings' default too).
RUN_VAR_DIR ?= $(CURDIR)/var
CHROMIUM := /usr/bin/chromium

.PHONY: help venv python run soak test test-suite test-fast lint fmt chromium lock lock-upgrade \
	services services-stop services-env bench clean

help:
	@echo "make run            install, migrate, load demo data, start web + worker + scheduler"
	@echo "make test           ruff, mypy and the test suite (embedded default)"
	@echo "make test-fast      the suite less its browser and worker-process tests"
	@echo "                    (PYTHON=3.12 for another Python; see README \"Python versions\")"
	@echo "make lock           update uv.lock after pyproject.toml changed (UPGRADE=pkg: upgrade one)"
	@echo "make lock-upgrade   every dependency to the newest version pyproject.toml allows"
	@echo "make soak           the embedded stack under load for SOAK_SECONDS (180), then checks"
	@echo "make services       start a throwaway PostgreSQL 15 + Redis and print their env"
	@echo "make services-stop  stop them"
	@echo "make bench          benchmarks against make services"
	@echo "make lint / fmt     check / apply formatting and lint fixes"

# Says which Python, or fails with one line naming the one that is missing.
python:
	@$(TOOLCHAIN) python $(PYTHON) >/dev/null
	@echo "Python $(PYTHON_VERSION) ($(PYTHON_EXE)) in $(VENV)"

# Exactly what uv.lock pins, the dev extra included, and Salvo itself editable; `--locked`
# refuses a lock that no longer matches pyproject.toml (run `make lock`). A venv of another
# Python is made anew.
$(STAMP): pyproject.toml uv.lock | python
	@$(ENSURE_UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra dev --python $(PYTHON_EXE)
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

# supervisord runs web, worker and beat (scripts/supervisord.conf): a program that dies is
# started again while the others go on; Ctrl-C stops all three gracefully. The web server is
# gunicorn with DEBUG off, as in production, serving the static files collected here.
run: venv
	SALVO_VAR_DIR=$(RUN_VAR_DIR) $(PY) manage.py migrate --noinput
	SALVO_VAR_DIR=$(RUN_VAR_DIR) $(PY) manage.py collectstatic --noinput -v0
	SALVO_VAR_DIR=$(RUN_VAR_DIR) $(PY) manage.py load_demo --admin-url http://$(HOST):$(PORT)/admin/
	@echo
	@echo "  Salvo admin:  http://$(HOST):$(PORT)/admin/   (login printed above)"
	@echo "  REST API:     http://$(HOST):$(PORT)/api/   docs: http://$(HOST):$(PORT)/api/docs/"
	@echo "  Ctrl-C stops the web server, the worker and the scheduler."
	@echo
	SALVO_VAR_DIR=$(RUN_VAR_DIR) SALVO_HOST=$(HOST) SALVO_PORT=$(PORT) DJANGO_DEBUG=false \
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
	$(BIN)/lint-imports

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint test-suite

# The tests alone, on whichever profile the environment selects (.ci/run uses it again with
# DATABASE_URL and CELERY_BROKER_URL from `make services`): the browser and worker-process
# tests in a second pytest process beside the rest, each with its own var/ corner, test
# database and broker (scripts/test-suite.sh); it fails when either fails.
test-suite: venv chromium
	TEST_VAR_DIR=$(TEST_VAR_DIR) scripts/test-suite.sh $(BIN)/pytest --create-db $(PYTEST_ARGS)

# What .ci/run runs on the Pythons other than the newest: every test but those that drive
# Chromium or start worker processes (tests/conftest.py marks them), lint and types aside.
test-fast: venv
	SALVO_VAR_DIR=$(TEST_VAR_DIR) $(BIN)/pytest --create-db -m "not browser and not worker" \
		$(PYTEST_ARGS)

# uv.lock: every dependency pinned with its hashes, for Python 3.11 to 3.13 on any platform.
# `make lock` keeps each pinned version that still fits pyproject.toml; UPGRADE="celery kombu"
# moves those to their newest allowed versions; `make lock-upgrade` moves everything.
lock: | python
	@$(ENSURE_UV)
	$(UV) lock --python $(PYTHON_EXE) $(foreach name,$(UPGRADE),--upgrade-package $(name))

lock-upgrade: | python
	@$(ENSURE_UV)
	$(UV) lock --python $(PYTHON_EXE) --upgrade

services:
	@$(SERVICES) start

services-stop:
	@$(SERVICES) stop

services-env:
	@$(SERVICES) env

# Against `make services` (started if needed); BENCH_PROFILES=10000 for a quick look,
# BENCH_PROFILES=10000000 for the 10M figures (hours: every run sends 20M messages).
BENCH_PROFILES ?= 1000000
# Delivery rows of a year of earlier campaigns in the tables while the delivery benchmark
# measures (BENCH_HISTORY=20000000: "a year of history"); 0 measures with none, and drops
# what an earlier run generated.
BENCH_HISTORY ?= 0
BENCH_TRIGGER_RECIPIENTS ?= 200000
# The trigger benchmark twice: its clients as fast as answered (what the machine accepts),
# then offering this many recipients a second (the first message's wait at a known load).
BENCH_TRIGGER_RATE ?= 8000
# Tracking webhooks posted to the web server: in SendGrid's batches (100 events a post), then
# one event a post as Postmark sends them (fewer: it is the web server's request rate).
BENCH_EVENTS ?= 1000000
BENCH_EVENTS_ONE_PER_POST ?= 50000
bench: venv
	@$(SERVICES) start >/dev/null
	eval "$$($(SERVICES) env)" && $(PY) manage.py migrate --noinput \
		&& $(PY) manage.py bench_audience --profiles $(BENCH_PROFILES) \
		&& $(PY) manage.py bench_delivery --profiles $(BENCH_PROFILES) --channels email,sms \
			--history-deliveries $(BENCH_HISTORY) \
		&& $(PY) manage.py bench_triggers --recipients $(BENCH_TRIGGER_RECIPIENTS) \
		&& $(PY) manage.py bench_triggers --recipients $(BENCH_TRIGGER_RECIPIENTS) \
			--rate $(BENCH_TRIGGER_RATE) \
		&& $(PY) manage.py bench_events --events $(BENCH_EVENTS) --format sendgrid \
		&& $(PY) manage.py bench_events --events $(BENCH_EVENTS_ONE_PER_POST) --format postmark

clean:
	rm -rf $(TEST_VAR_DIR) .pytest_cache .mypy_cache .ruff_cache build dist
