# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: run test lint format stress stress-db

$(VENV)/.base: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.base
	$(PY) server.py --port $(PORT)

test: $(VENV)/.test
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server not found: installing Debian's redis-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "The tests need a real redis-server binary on PATH."; \
	    echo "Install it with: sudo apt-get install redis-server  (Debian/Ubuntu)  or  brew install redis  (macOS)"; \
	    exit 1; \
	  fi; }
	$(PY) -m pytest

# ruff (format check and lint, settings in pyproject.toml) and mypy over the server's packages.
lint: $(VENV)/.test
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy server.py config handlers models realtime processing

format: $(VENV)/.test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Long stress loops at the counts their issues ask for (minutes each); `make test` runs short versions of them.
stress: stress-db

# The embedded database: 200 SIGTERMs to the launcher and to plain secantusd-py, 50 SIGKILLed servers.
stress-db: $(VENV)/.test
	DB_STRESS=1 $(PY) -m pytest -q -s tests/test_embedded_db.py tests/test_server_process.py \
	  -k "any_moment or same_signals or killed_server"
