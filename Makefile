# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
WEB_SOURCES := $(shell find web/src -type f 2>/dev/null) web/build.mjs web/tsconfig.json

.PHONY: run test lint format web stress stress-realtime stress-db

$(VENV)/.base: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The browser app (web/): npm packages from the lockfile, then a type check and the esbuild bundle in
# web/dist, rebuilt only when its sources change. Node.js and npm are needed to build it, not to serve it.
web: web/dist/index.html

web/node_modules/.installed: web/package.json web/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "Building the web app (web/) needs Node.js 18+ and npm."; \
	  echo "Install them with: sudo apt-get install nodejs npm  (Debian/Ubuntu)  or  brew install node  (macOS)"; \
	  exit 1; }
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web/dist/index.html: web/node_modules/.installed $(WEB_SOURCES)
	cd web && npm run --silent typecheck && npm run --silent build

run: $(VENV)/.base web
	$(PY) server.py --port $(PORT)

test: $(VENV)/.test web
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "redis-server not found: installing Debian's redis-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "The tests need a real redis-server binary on PATH."; \
	    echo "Install it with: sudo apt-get install redis-server  (Debian/Ubuntu)  or  brew install redis  (macOS)"; \
	    exit 1; \
	  fi; }
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "chromium not found: installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "The browser tests drive Debian's Chromium at /usr/bin/chromium (or ENGINEL_CHROMIUM)."; \
	    echo "Install it with: sudo apt-get install chromium  (Debian/Ubuntu); without it they are skipped."; \
	  fi; }
	$(PY) -m pytest

# Longer runs of the suite's randomized race tests: `make test` runs each scenario for a few seconds,
# these for STRESS_SECONDS each (default 60). `stress` runs every area's stress-* target.
STRESS_SECONDS ?= 60
stress: stress-realtime stress-db

# Realtime recovery: subscribe-with-since cycles racing a publisher under CPU load (one server per broker,
# two processes sharing Redis); every cycle checks exact offsets (tests/realtime/test_recovery_stress.py).
stress-realtime: $(VENV)/.test
	REALTIME_STRESS_SECONDS=$(STRESS_SECONDS) $(PY) -m pytest -q --timeout=$$(( $(STRESS_SECONDS) * 4 + 300 )) \
	  tests/realtime/test_recovery_stress.py

# ruff (format check and lint, settings in pyproject.toml) and mypy over the server's packages.
lint: $(VENV)/.test
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy server.py config handlers models realtime processing

format: $(VENV)/.test
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The embedded database: 200 SIGTERMs to the launcher and to plain secantusd-py, 50 SIGKILLed servers.
stress-db: $(VENV)/.test
	DB_STRESS=1 $(PY) -m pytest -q -s tests/test_embedded_db.py tests/test_server_process.py \
	  -k "any_moment or same_signals or killed_server"
