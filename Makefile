# Callbridge: `make run` serves a local portal (web server, Celery worker and beat), `make test` runs the suite.
# Both create .venv from requirements.txt when needed; pins are reinstalled only when requirements.txt changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.requirements-installed
PYTEST_ARGS ?=
# make simulate: which tenant and scenario, and any more simulate_call options (e.g. SIMULATE_ARGS="--count 3").
TENANT ?= demo
SCENARIO ?= answered
SIMULATE_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test faults lint format venv simulate messages screenshots browser-test

help:
	@echo "make run     serve the portal on PORT (default 8000) with the inbox processor, a Celery worker and beat"
	@echo "make test    run the whole test suite (PYTEST_ARGS=... passes options to pytest)"
	@echo "make faults  the fault suite on the real stack (PostgreSQL, private redis-server; ~5 min)"
	@echo "make simulate SCENARIO=answered  play a simulated call into the running portal (TENANT=demo)"
	@echo "make lint    ruff check and ruff format --check"
	@echo "make format  apply ruff's fixes and formatting"
	@echo "make venv    create .venv and install requirements.txt"
	@echo "make messages      refresh and compile the Russian catalogue (locale/ru; needs GNU gettext)"
	@echo "make browser-test  the Playwright tests in Debian's Chromium (apt-get install chromium)"
	@echo "make screenshots   run the browser tests and refresh docs/screenshots/"

venv: $(INSTALLED)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Callbridge needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# The stamp is touched only after pip succeeds, so an interrupted install is retried by the next make.
$(INSTALLED): requirements.txt | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# First run only: a .env with DEBUG on and freshly generated keys. An existing .env is never rewritten.
.env: | $(INSTALLED)
	$(PY) -m portal.runall write-env $@

# Migrates, creates the cache table, seeds the demo tenant once, prints the admin URL and login, then serves on
# PORT (default 8000) with the inbox processor, a worker and beat. Ctrl-C stops all.
run: $(INSTALLED) .env
	$(PY) -m portal.runall

# Plays one simulated call (answered, missed, busy, transfer, ring-group, click-to-call, recording) through the
# inbound URLs of the portal that `make run` serves; see docs/simulator.md.
simulate: $(INSTALLED) .env
	$(PY) manage.py simulate_call $(TENANT) --scenario $(SCENARIO) $(SIMULATE_ARGS)

test: $(INSTALLED)
	$(PY) -m pytest $(PYTEST_ARGS)

# The fault suite (docs/reliability.md): gunicorn, a Celery worker and beat, PostgreSQL (DATABASE_URL, default
# the local server) and a private redis-server on a free port, with fake PBX and CRM servers on loopback.
faults: $(INSTALLED)
	$(PY) -m pytest -m faults tests/faults -p no:cacheprovider -v $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(INSTALLED)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The Russian catalogue: extract every marked string (provider code and tests are not scanned for the admin's
# words), then compile. Translate new entries in locale/ru/LC_MESSAGES/django.po and run it again.
MESSAGES_IGNORE := --ignore='.venv/*' --ignore='tests/*' --ignore='var/*' --ignore='bench/*' --ignore='static/*'
messages: $(INSTALLED)
	DEBUG=true $(PY) manage.py makemessages -l ru --no-location $(MESSAGES_IGNORE)
	DEBUG=true $(PY) manage.py compilemessages --ignore='.venv/*'

browser-test: $(INSTALLED)
	$(PY) -m pytest tests/browser -m browser -p no:cacheprovider $(PYTEST_ARGS)

# The browser tests write their screenshots to SCREENSHOTS_DIR; this keeps the ones the README shows.
screenshots: $(INSTALLED)
	rm -rf var/screenshots && mkdir -p var/screenshots docs/screenshots
	SCREENSHOTS_DIR=$(CURDIR)/var/screenshots $(PY) -m pytest tests/browser -m browser -p no:cacheprovider -q
	cp var/screenshots/dashboard.png var/screenshots/call-page.png var/screenshots/connection-page.png docs/screenshots/
