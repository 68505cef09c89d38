# Two commands do all the set-up on a fresh machine (Python 3.11): `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.install-stamp
TRACKING_URI ?= sqlite:///mlflow.db
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_DISABLE_TELEMETRY := 1

OPTUNA_STORAGE ?= sqlite:///optuna.db
UI_PORT ?= 5000
DASHBOARD_PORT ?= 8080
# Succeeds when nothing listens on 127.0.0.1:<port> (SO_REUSEADDR: a port left in TIME_WAIT by a
# stopped server counts as free, as it does for the servers themselves).
PORT_FREE = $(BIN)/python -c 'import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1])))' 2>/dev/null
# When this make started: `make run` reports its time, install included.
START := $(shell date +%s)

.PHONY: install run test lint docs docs-serve ui dashboard lock clean

# The stamp makes a second install a no-op; editing requirements, the lock or pyproject.toml reinstalls.
# requirements.txt: the package's runtime dependencies; requirements-dev.txt: tests, lint, uv;
# requirements-ray.txt: the freezeframe[ray] extra (Ray, for -P cluster=ray and its tests).
# uv installs the lock (constraints.txt) in about 35 s where pip takes about 200 s: torch's CUDA wheels
# are several GB and uv fetches them in parallel. pip bootstraps uv at the version the lock pins; uv
# reads the system's certificates as pip does (UV_SYSTEM_CERTS; older uv releases called it UV_NATIVE_TLS).
# Bytecode: Python writes a module's .pyc the first time it imports it, except where PYTHONDONTWRITEBYTECODE
# is set (CI's environment sets it). There nothing would ever write them and every process would compile
# torch, sklearn and mlflow from source (27 s to import freezeframe's commands instead of 12 s), so there
# the install compiles them all (--compile-bytecode, ~50 s on 2 cores; pip always does, uv by default not).
# Where uv cannot run, pip installs the same lock. The project itself goes in editable (the checkout is
# the code that runs) for the `freezeframe` command; --no-build-isolation: setuptools is already there,
# so this needs no network.
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
LOCK := -r requirements.txt -r requirements-dev.txt -r requirements-ray.txt -c constraints.txt
UV_VERSION := $(shell sed -n 's/^uv==//p' constraints.txt)
UV_COMPILE := $(if $(PYTHONDONTWRITEBYTECODE),--compile-bytecode)
$(STAMP): requirements.txt requirements-dev.txt requirements-ray.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	{ $(PIP) uv==$(UV_VERSION) && UV_SYSTEM_CERTS=true UV_LINK_MODE=copy $(BIN)/uv pip install --quiet $(UV_COMPILE) \
	    --python $(BIN)/python $(LOCK); } || { echo "make install: uv failed; installing with pip"; $(PIP) $(LOCK); }
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# --env-manager local runs the entry point's `python` from PATH: here .venv's, as after `source .venv/bin/activate`.
run: install
	PATH="$(BIN):$$PATH" MLFLOW_TRACKING_URI=$(TRACKING_URI) \
	  $(BIN)/mlflow run . -e main --env-manager local --experiment-name quickstart
	@echo
	@echo "make run took $$(( $$(date +%s) - $(START) )) s (set-up included)."
	@echo "Open the MLflow UI with  make ui  and follow the MLflow links printed above."
	@echo "Next commands (docs/quickstart.md), in this shell after activating the venv once:"
	@echo "  source $(VENV)/bin/activate"
	@echo "  mlflow run . -e predict --env-manager local -P input=<image or folder>"
	@echo "  freezeframe predict --input <image or folder> --top_k 3"

# Two test processes: the slow tests mostly wait on subprocesses and servers. TEST_WORKERS=0 runs in one.
# --maxschedchunk 1: each process takes the next test when it is free. The tests marked slow come first
# (tests/conftest.py), so they spread over both processes; pytest-xdist's default hands out the first
# quarter of the list in one chunk, which gave every slow test to the same process, one after another.
# --durations=15: the slowest tests, printed at the end (the 8-minute budget is watched there).
TEST_WORKERS ?= 2
test: install
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -n $(TEST_WORKERS) --maxschedchunk 1 --durations=15

# ruff: style, and at most 6 arguments a function (pyproject.toml); lint-imports: the layers and no cycles
# (pyproject.toml's [tool.importlinter] contracts: freezeframe → tracking → pipelines, pipelines' stages in
# the order of the flow, mlflow in tracking/ alone).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The docs site (mkdocs.yml, docs/): --strict fails on a broken link or a page missing from the nav.
DOCS_PORT ?= 8000
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: install
	@$(PORT_FREE) $(DOCS_PORT) || { echo "make docs-serve: port $(DOCS_PORT) is in use: make docs-serve DOCS_PORT=$$(( $(DOCS_PORT) + 1 ))"; exit 1; }
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no GenAI job runners (half a dozen processes) for a training UI
ui: install
	@$(PORT_FREE) $(UI_PORT) || { echo "make ui: port $(UI_PORT) is in use: make ui UI_PORT=$$(( $(UI_PORT) + 1 ))"; exit 1; }
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow server --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port $(UI_PORT) --workers 1

dashboard: install
	@$(PORT_FREE) $(DASHBOARD_PORT) || { echo "make dashboard: port $(DASHBOARD_PORT) is in use: make dashboard DASHBOARD_PORT=$$(( $(DASHBOARD_PORT) + 1 ))"; exit 1; }
	$(BIN)/optuna-dashboard $(OPTUNA_STORAGE) --host 127.0.0.1 --port $(DASHBOARD_PORT)

lock: install
	{ echo "# Full lock of the environment resolved from requirements.txt, requirements-dev.txt and requirements-ray.txt on Python 3.11 / x86_64 (make lock rewrites it)."; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -v '^pip=='; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache site
